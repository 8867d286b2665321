//! Custom resource types and the CRD generated from them.

mod account;

pub use account::*;

use kube::CustomResourceExt;

/// The CRD YAML for every resource this project defines, as `kube-acme-dns crd` prints
/// it and as `crd/` and the chart carry it.
pub fn crd_yaml() -> String {
    let crd = AcmeDnsAccount::crd();
    // serde_yaml cannot fail on a value that serde_json can represent.
    serde_yaml::to_string(&crd).expect("a CRD always serialises to YAML")
}
