//! An ADS client that subscribes to ServiceEntries like istiod does, ACKs every response, and
//! keeps the last set it received.
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use cloudmap_mcp::proto::envoy::config::core::v3::Node;
use cloudmap_mcp::proto::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use cloudmap_mcp::proto::istio::mcp::v1alpha1 as mcp;
use cloudmap_mcp::proto::istio::networking::v1alpha3 as net;
use cloudmap_mcp::proto::DiscoveryRequest;
use prost::Message;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

pub const SE_TYPE: &str = "networking.istio.io/v1/ServiceEntry";

/// Served ServiceEntries by resource name (`<namespace>/<name>`).
pub type Entries = BTreeMap<String, net::ServiceEntry>;

pub struct Ads {
    rx: watch::Receiver<Option<Entries>>,
    responses: watch::Receiver<usize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Ads {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn decode(resources: &[prost_types::Any]) -> Entries {
    let mut out = BTreeMap::new();
    for any in resources {
        let r = mcp::Resource::decode(any.value.as_slice()).expect("mcp Resource");
        let meta = r.metadata.expect("metadata");
        let se = net::ServiceEntry::decode(r.body.expect("body").value.as_slice()).expect("ServiceEntry");
        out.insert(meta.name, se);
    }
    out
}

impl Ads {
    pub async fn connect(grpc: SocketAddr) -> Ads {
        let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{grpc}"))
            .await
            .expect("connect to ADS")
            .max_decoding_message_size(usize::MAX);
        let (req_tx, req_rx) = mpsc::channel(16);
        let node = Node {
            id: "sidecar~10.0.0.1~istiod-test.istio-system~istio-system.svc.cluster.local".into(),
            ..Default::default()
        };
        req_tx
            .send(DiscoveryRequest { type_url: SE_TYPE.into(), node: Some(node.clone()), ..Default::default() })
            .await
            .unwrap();
        let mut stream =
            client.stream_aggregated_resources(ReceiverStream::new(req_rx)).await.expect("ADS stream").into_inner();
        let (tx, rx) = watch::channel(None);
        let (count_tx, responses) = watch::channel(0usize);
        let task = tokio::spawn(async move {
            let _keep = client;
            while let Ok(Some(resp)) = stream.message().await {
                let entries = decode(&resp.resources);
                let _ = req_tx
                    .send(DiscoveryRequest {
                        type_url: resp.type_url.clone(),
                        version_info: resp.version_info.clone(),
                        response_nonce: resp.nonce.clone(),
                        node: Some(node.clone()),
                        ..Default::default()
                    })
                    .await;
                tx.send_replace(Some(entries));
                count_tx.send_modify(|c| *c += 1);
            }
        });
        Ads { rx, responses, task }
    }

    /// Responses received so far.
    pub fn responses(&self) -> usize {
        *self.responses.borrow()
    }

    pub fn current(&self) -> Option<Entries> {
        self.rx.borrow().clone()
    }

    /// Waits until the served set satisfies `pred`; panics with the last set after `timeout`.
    pub async fn wait_for(&mut self, what: &str, timeout: Duration, pred: impl Fn(&Entries) -> bool) -> Entries {
        let r = tokio::time::timeout(timeout, self.rx.wait_for(|e| e.as_ref().is_some_and(&pred)))
            .await
            .ok()
            .and_then(|r| r.ok().map(|e| e.clone()));
        match r {
            Some(e) => e.unwrap(),
            None => panic!(
                "timed out after {timeout:?} waiting for: {what}; last served: {:#?}",
                summary(self.current().as_ref())
            ),
        }
    }
}

/// Resource name → (hosts, endpoint addresses).
pub type Summary = BTreeMap<String, (Vec<String>, Vec<String>)>;

/// A compact description for failure messages.
pub fn summary(e: Option<&Entries>) -> Option<Summary> {
    e.map(|e| {
        e.iter()
            .map(|(k, v)| (k.clone(), (v.hosts.clone(), v.endpoints.iter().map(|ep| ep.address.clone()).collect())))
            .collect()
    })
}

/// The endpoint addresses of the entry serving `host`, sorted.
pub fn addresses(e: &Entries, host: &str) -> Option<Vec<String>> {
    let se = e.values().find(|se| se.hosts.iter().any(|h| h == host))?;
    let mut a: Vec<String> = se.endpoints.iter().map(|ep| ep.address.clone()).collect();
    a.sort();
    Some(a)
}
