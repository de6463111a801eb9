//! A YAML/JSON document as a tree that keeps each node's YAML tag (`!GetAtt`, `!Ref`, `!Sub`) and
//! its position in the file, so the loaders can resolve CloudFormation's short-form intrinsics and
//! report an unknown field with its line and column.
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// Line and column (1-based) of a node in its file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pos {
    pub line: u64,
    pub column: u64,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {} column {}", self.line, self.column)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// The node's local tag without its `!` (`GetAtt`), if any.
    pub tag: Option<String>,
    pub pos: Pos,
    pub value: Value,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    /// Entries in file order.
    Map(Vec<(String, Node)>),
}

impl Node {
    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_map(&self) -> Option<&[(String, Node)]> {
        match &self.value {
            Value::Map(m) => Some(m),
            _ => None,
        }
    }

    pub fn as_seq(&self) -> Option<&[Node]> {
        match &self.value {
            Value::Seq(s) => Some(s),
            _ => None,
        }
    }

    /// The value of `key` in a mapping.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.as_map()?.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// A scalar as text (numbers and booleans as written by YAML's core schema).
    pub fn scalar_text(&self) -> Option<String> {
        match &self.value {
            Value::Str(s) => Some(s.clone()),
            Value::Int(i) => Some(i.to_string()),
            Value::Float(f) => Some(f.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self.value {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(i64::try_from(v).map(Value::Int).unwrap_or(Value::Float(v as f64)))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Float(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::Str(v.to_string()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::Str(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut v = Vec::new();
        while let Some(n) = seq.next_element::<Node>()? {
            v.push(n);
        }
        Ok(Value::Seq(v))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut v: Vec<(String, Node)> = Vec::new();
        while let Some(k) = map.next_key::<KeyText>()? {
            let n = map.next_value::<Node>()?;
            if v.iter().any(|(e, _)| *e == k.0) {
                return Err(de::Error::custom(format!("line {}: field {:?} given twice", n.pos.line, k.0)));
            }
            v.push((k.0, n));
        }
        Ok(Value::Map(v))
    }
}

/// A mapping key: any scalar, as text.
struct KeyText(String);

impl<'de> Deserialize<'de> for KeyText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match d.deserialize_any(ValueVisitor)? {
            Value::Str(s) => Ok(KeyText(s)),
            Value::Int(i) => Ok(KeyText(i.to_string())),
            Value::Bool(b) => Ok(KeyText(b.to_string())),
            Value::Float(f) => Ok(KeyText(f.to_string())),
            _ => Err(de::Error::custom("a mapping key must be a scalar")),
        }
    }
}

struct RawValue(Value);

impl<'de> Deserialize<'de> for RawValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ValueVisitor).map(RawValue)
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = serde_saphyr::Spanned::<serde_saphyr::Tagged<RawValue>>::deserialize(d)?;
        let serde_saphyr::Tagged(RawValue(value), tag) = s.value;
        let tag = tag.and_then(|t| {
            // Core-schema tags (`!!str`, `tag:yaml.org,2002:int`) are not intrinsics.
            if t.starts_with("tag:yaml.org,2002:") || t.starts_with("!!") {
                None
            } else {
                Some(t.trim_start_matches('!').to_string())
            }
        });
        let pos = Pos { line: s.defined.line(), column: s.defined.column() };
        Ok(Node { tag, pos, value })
    }
}

/// The most nodes one App Mesh file may hold (after alias expansion).
pub const MAX_NODES: usize = 2_000_000;

/// Parses every document of a YAML (or JSON) text. Empty documents are left out.
pub fn parse_documents(text: &str) -> Result<Vec<Node>, String> {
    // Room for a file at the size cap (10,000 routes as CLI JSON take about 300,000 nodes in
    // 2 MB), not for aliases that expand a small file past it: the parser refuses more nodes.
    let options = serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_events: MAX_NODES * 2,
            max_nodes: MAX_NODES,
        },
        strict_booleans: true,
        leading_zero_numbers_as_strings: true,
        underscored_numbers_as_strings: true,
        with_snippet: false,
    };
    let docs: Vec<Option<Node>> =
        serde_saphyr::from_str_multiple_with_options(text, options).map_err(|e| e.to_string())?;
    Ok(docs.into_iter().flatten().filter(|n| n.value != Value::Null).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_tags_and_positions() {
        let docs = parse_documents(
            "a: !GetAtt Node.VirtualNodeName\nb: !Ref X\nc:\n  - !Sub '${A}-x'\n  - !GetAtt [N, Arn]\n---\nk: 1\n",
        )
        .unwrap();
        assert_eq!(docs.len(), 2);
        let a = docs[0].get("a").unwrap();
        assert_eq!(a.tag.as_deref(), Some("GetAtt"));
        assert_eq!(a.as_str(), Some("Node.VirtualNodeName"));
        assert_eq!(a.pos.line, 1);
        assert_eq!(docs[0].get("b").unwrap().tag.as_deref(), Some("Ref"));
        let c = docs[0].get("c").unwrap().as_seq().unwrap();
        assert_eq!(c[0].tag.as_deref(), Some("Sub"));
        assert_eq!(c[1].tag.as_deref(), Some("GetAtt"));
        assert_eq!(c[1].as_seq().unwrap().len(), 2);
        assert_eq!(docs[1].get("k").unwrap().value, Value::Int(1));
    }

    #[test]
    fn reads_json() {
        let docs = parse_documents("{\"a\": {\"Fn::GetAtt\": [\"N\", \"VirtualNodeName\"]}, \"n\": 3}").unwrap();
        assert_eq!(docs[0].get("a").unwrap().get("Fn::GetAtt").unwrap().as_seq().unwrap().len(), 2);
    }

    #[test]
    fn an_alias_bomb_is_refused_by_the_node_budget() {
        let mut y = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..8 {
            y.push_str(&format!(
                "b{i}: &b{i} [{}]\n",
                vec![if i == 1 { "*a".to_string() } else { format!("*b{}", i - 1) }; 10].join(", ")
            ));
        }
        let e = parse_documents(&y).unwrap_err();
        assert!(e.contains("budget") || e.contains("alias"), "{e}");
    }

    #[test]
    fn rejects_repeated_keys() {
        assert!(parse_documents("a: 1\na: 2\n").is_err());
    }
}
