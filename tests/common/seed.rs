//! Seeds Cloud Map (moto) with the AWS SDK itself.
use aws_sdk_servicediscovery::types::{CustomHealthStatus, HealthCheckCustomConfig};
use aws_sdk_servicediscovery::Client;

pub struct Seed {
    pub client: Client,
}

impl Seed {
    pub async fn new(endpoint: &str) -> Seed {
        let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .endpoint_url(endpoint)
            .load()
            .await;
        Seed { client: Client::new(&sdk) }
    }

    pub async fn namespace_id(&self, name: &str) -> String {
        let out = self.client.list_namespaces().send().await.expect("ListNamespaces");
        out.namespaces()
            .iter()
            .find(|n| n.name() == Some(name))
            .and_then(|n| n.id())
            .unwrap_or_else(|| panic!("namespace {name} not found"))
            .to_string()
    }

    pub async fn http_namespace(&self, name: &str) -> String {
        self.client.create_http_namespace().name(name).send().await.expect("CreateHttpNamespace");
        self.namespace_id(name).await
    }

    /// moto wants a distinct VPC id per private DNS namespace; any string is accepted.
    pub async fn dns_namespace(&self, name: &str, vpc: &str) -> String {
        self.client.create_private_dns_namespace().name(name).vpc(vpc).send().await.expect("CreatePrivateDnsNamespace");
        self.namespace_id(name).await
    }

    pub async fn service(&self, namespace_id: &str, name: &str) -> String {
        let out =
            self.client.create_service().name(name).namespace_id(namespace_id).send().await.expect("CreateService");
        out.service().and_then(|s| s.id()).expect("service id").to_string()
    }

    /// A service with a custom health check (instances can be flipped with [`Seed::set_health`]).
    pub async fn service_with_health_check(&self, namespace_id: &str, name: &str) -> String {
        let out = self
            .client
            .create_service()
            .name(name)
            .namespace_id(namespace_id)
            .health_check_custom_config(HealthCheckCustomConfig::builder().build())
            .send()
            .await
            .expect("CreateService");
        out.service().and_then(|s| s.id()).expect("service id").to_string()
    }

    /// `n` services `s0`, `s1`, ... in `namespace_id`, each with one instance `i` at `ip`. Returns their ids.
    pub async fn services_with_one_instance(&self, namespace_id: &str, n: usize, ip: &str) -> Vec<String> {
        let mut ids = Vec::with_capacity(n);
        for i in 0..n {
            let id = self.service(namespace_id, &format!("s{i}")).await;
            self.register(&id, "i", &[("AWS_INSTANCE_IPV4", ip)]).await;
            ids.push(id);
        }
        ids
    }

    pub async fn register(&self, service_id: &str, instance_id: &str, attributes: &[(&str, &str)]) {
        let mut req = self.client.register_instance().service_id(service_id).instance_id(instance_id);
        for (k, v) in attributes {
            req = req.attributes(*k, *v);
        }
        req.send().await.expect("RegisterInstance");
    }

    /// UpdateServiceAttributes: sets the service's own attributes.
    pub async fn set_service_attributes(&self, service_id: &str, attrs: &[(&str, &str)]) {
        let mut req = self.client.update_service_attributes().service_id(service_id);
        for (k, v) in attrs {
            req = req.attributes(*k, *v);
        }
        req.send().await.expect("UpdateServiceAttributes");
    }

    pub async fn deregister(&self, service_id: &str, instance_id: &str) {
        self.client
            .deregister_instance()
            .service_id(service_id)
            .instance_id(instance_id)
            .send()
            .await
            .expect("DeregisterInstance");
    }

    pub async fn set_health(&self, service_id: &str, instance_id: &str, healthy: bool) {
        let status = if healthy { CustomHealthStatus::Healthy } else { CustomHealthStatus::Unhealthy };
        self.client
            .update_instance_custom_health_status()
            .service_id(service_id)
            .instance_id(instance_id)
            .status(status)
            .send()
            .await
            .expect("UpdateInstanceCustomHealthStatus");
    }

    pub async fn delete_service(&self, service_id: &str) {
        self.client.delete_service().id(service_id).send().await.expect("DeleteService");
    }

    /// The seed documents: `my-namespace` (HTTP) with getmesh-external-service, and the App Mesh
    /// colorapp example (DNS_PRIVATE) with blue/red colorapp and front.
    pub async fn seed_documents(&self) -> SeedIds {
        let my_ns = self.http_namespace("my-namespace").await;
        let getmesh = self.service(&my_ns, "getmesh-external-service").await;
        self.register(&getmesh, "getmesh-external-service-1", &[("AWS_INSTANCE_IPV4", "52.192.72.89")]).await;

        let color_ns = self.dns_namespace("howto-k8s-cloudmap.pvt.aws.local", "vpc-colorapp").await;
        let colorapp = self.service(&color_ns, "colorapp").await;
        for (ip, version, pod, hash) in [
            ("192.168.10.38", "blue", "colorapp-blue-7c77b4d4d4-5vmrv", "7c77b4d4d4"),
            ("192.168.34.225", "red", "colorapp-red-5f6c8d8b66-wq2xk", "5f6c8d8b66"),
        ] {
            self.register(
                &colorapp,
                ip,
                &[
                    ("AWS_INSTANCE_IPV4", ip),
                    ("AWS_INIT_HEALTH_STATUS", "HEALTHY"),
                    ("app", "colorapp"),
                    ("version", version),
                    ("k8s.io/namespace", "howto-k8s-cloudmap"),
                    ("k8s.io/pod", pod),
                    ("pod-template-hash", hash),
                ],
            )
            .await;
        }
        let front = self.service(&color_ns, "front").await;
        self.register(
            &front,
            "192.168.59.249",
            &[
                ("AWS_INSTANCE_IPV4", "192.168.59.249"),
                ("AWS_INIT_HEALTH_STATUS", "HEALTHY"),
                ("app", "front"),
                ("version", "v1"),
                ("k8s.io/namespace", "howto-k8s-cloudmap"),
                ("k8s.io/pod", "front-6b9c9f7d5b-mx8tl"),
                ("pod-template-hash", "6b9c9f7d5b"),
            ],
        )
        .await;
        SeedIds { my_ns, getmesh, color_ns, colorapp, front }
    }
}

pub struct SeedIds {
    pub my_ns: String,
    pub getmesh: String,
    pub color_ns: String,
    pub colorapp: String,
    pub front: String,
}
