//! The optional second opinion: a SubjectAccessReview asking the API server whether
//! the user the front proxy vouched for may `create` the solver resource. The
//! aggregator has already checked it, so this is defence in depth.

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::{Api, Client, api::PostParams};

use super::{SolverApi, front_proxy::User};

#[derive(Clone)]
pub struct Authorizer {
    client: Client,
}

impl Authorizer {
    pub fn new(client: Client) -> Self {
        Self { client }
    }

    pub async fn may_create(&self, api: &SolverApi, user: &User) -> kube::Result<bool> {
        let reviews: Api<SubjectAccessReview> = Api::all(self.client.clone());
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(user.name.clone()),
                groups: Some(user.groups.clone()),
                resource_attributes: Some(ResourceAttributes {
                    group: Some(api.group.into()),
                    version: Some(api.version.into()),
                    resource: Some(api.resource.into()),
                    verb: Some("create".into()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let answer = reviews.create(&PostParams::default(), &review).await?;
        Ok(answer.status.is_some_and(|s| s.allowed))
    }
}
