//! The discovery documents the aggregator and kubectl read: `/apis`, `/apis/<group>`
//! and `/apis/<group>/<version>` (the aggregator's availability probe).

use axum::{Json, extract::State};
use serde_json::{Value, json};

use super::SolverApi;

pub async fn api_group_list(State(api): State<SolverApi>) -> Json<Value> {
    Json(json!({
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": [group(&api)],
    }))
}

pub async fn api_group(State(api): State<SolverApi>) -> Json<Value> {
    Json(group(&api))
}

pub async fn api_resource_list(State(api): State<SolverApi>) -> Json<Value> {
    Json(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": api.group_version(),
        "resources": [{
            "name": api.resource,
            "singularName": api.resource,
            "namespaced": false,
            "kind": super::payload::KIND,
            "verbs": ["create"],
        }],
    }))
}

fn group(api: &SolverApi) -> Value {
    let version = json!({ "groupVersion": api.group_version(), "version": api.version });
    json!({
        "kind": "APIGroup",
        "apiVersion": "v1",
        "name": api.group,
        "versions": [version],
        "preferredVersion": version,
    })
}
