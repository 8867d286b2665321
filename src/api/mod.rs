//! Custom resource types and the CRD generated from them.

mod account;

pub use account::*;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// The AcmeDnsAccount CRD as it is installed: generated from the Rust types, with field
/// descriptions unwrapped so `kubectl explain` can wrap them to the terminal itself.
pub fn crd() -> CustomResourceDefinition {
    let mut value = serde_json::to_value(AcmeDnsAccount::crd()).expect("a CRD is JSON");
    unwrap_descriptions(&mut value);
    serde_json::from_value(value).expect("unwrapping descriptions keeps a valid CRD")
}

/// The CRD YAML, as `kube-acme-dns crd` prints it and as `crd/` and the chart carry it.
pub fn crd_yaml() -> String {
    serde_yaml::to_string(&crd()).expect("a CRD always serialises to YAML")
}

/// Doc comments are wrapped at 90 columns; a single line break inside a paragraph is
/// only that, so it becomes a space. Blank lines (paragraph breaks) stay.
fn unwrap_descriptions(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, child) in map.iter_mut() {
                match child {
                    serde_json::Value::String(text) if key == "description" => {
                        *text = text
                            .split("\n\n")
                            .map(|paragraph| paragraph.replace('\n', " "))
                            .collect::<Vec<_>>()
                            .join("\n\n");
                    }
                    _ => unwrap_descriptions(child),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(unwrap_descriptions),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptions_are_unwrapped_but_keep_paragraphs() {
        let mut value = serde_json::json!({
            "description": "one\ntwo\n\nthree",
            "properties": { "x": { "description": "a\nb" } },
        });
        unwrap_descriptions(&mut value);
        assert_eq!(value["description"], "one two\n\nthree");
        assert_eq!(value["properties"]["x"]["description"], "a b");
    }
}
