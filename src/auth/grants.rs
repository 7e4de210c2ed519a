//! Which role may call which gRPC method. `admin` may call everything; a method missing from
//! [`GRANTS`] (AdvanceStates, TestClock, any method added later) is therefore admin-only until
//! it is granted here.

use super::Role;
use crate::wire::{ACCOUNT_LIFECYCLE_SERVICE, BSS_EVENTS_SERVICE, LIFECYCLE_ANALYTICS_SERVICE};
use Role::{Analyst, Billing, Bss, BusinessHall};

/// A method's name and the roles besides `admin` that may call it.
pub type MethodGrant = (&'static str, &'static [Role]);

/// Each service and the grants of its methods.
pub const GRANTS: &[(&str, &[MethodGrant])] = &[
    (
        ACCOUNT_LIFECYCLE_SERVICE,
        &[
            ("ProvisionAccount", &[Billing]),
            ("MarkSold", &[Billing]),
            ("Activate", &[Billing]),
            ("Recharge", &[Billing, BusinessHall]),
            ("Charge", &[Billing]),
            ("Authorize", &[Billing]),
            ("Unlock", &[BusinessHall]),
            ("GetAccount", &[Billing, BusinessHall, Bss]),
            ("ListAccounts", &[Billing]),
            ("GetAccountHistory", &[Billing, BusinessHall]),
        ],
    ),
    (
        BSS_EVENTS_SERVICE,
        &[
            ("Subscribe", &[Bss]),
            ("ListDeadLetters", &[Bss]),
            ("Redeliver", &[Bss]),
        ],
    ),
    // The reports: read-only, for `analyst` (and admin); `analyst` may call nothing else.
    (
        LIFECYCLE_ANALYTICS_SERVICE,
        &[
            ("StageComposition", &[Analyst]),
            ("Flows", &[Analyst]),
            ("ChurnWarnings", &[Analyst]),
            ("Cohorts", &[Analyst]),
        ],
    ),
];

/// The roles besides `admin` granted the method at `path` (`/package.Service/Method`).
fn granted(path: &str) -> Option<&'static [Role]> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    GRANTS
        .iter()
        .filter(|(granted_service, _)| *granted_service == service)
        .flat_map(|(_, methods)| methods.iter())
        .find(|(granted_method, _)| *granted_method == method)
        .map(|(_, roles)| *roles)
}

/// Services every caller may use without a token: health (probes) and reflection (discovery).
const OPEN_SERVICES: [&str; 3] = [
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
];

/// Whether `path` (`/package.Service/Method`) needs no token.
pub fn is_open(path: &str) -> bool {
    OPEN_SERVICES.iter().any(|prefix| {
        path.strip_prefix(prefix)
            .is_some_and(|method| !method.is_empty() && !method.contains('/'))
    })
}

/// Whether `role` may call the method at `path`.
pub fn permits(role: Role, path: &str) -> bool {
    role == Role::Admin || granted(path).is_some_and(|roles| roles.contains(&role))
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    const LIFECYCLE: &str = "/ocs.lifecycle.v1.AccountLifecycle/";

    /// Every method path the protos define.
    fn proto_methods() -> Vec<String> {
        let set = prost_types::FileDescriptorSet::decode(crate::proto::FILE_DESCRIPTOR_SET)
            .expect("descriptor set");
        let mut methods = Vec::new();
        for file in set.file {
            for service in &file.service {
                for method in &service.method {
                    methods.push(format!(
                        "/{}.{}/{}",
                        file.package(),
                        service.name(),
                        method.name()
                    ));
                }
            }
        }
        methods
    }

    #[test]
    fn every_granted_method_exists_in_the_protos() {
        let methods = proto_methods();
        for (service, granted) in GRANTS {
            for (method, _) in *granted {
                let path = format!("/{service}/{method}");
                assert!(methods.contains(&path), "{path} is no method");
            }
        }
    }

    #[test]
    fn admin_may_call_every_method_and_the_sweep_and_clock_are_admin_only() {
        let methods = proto_methods();
        assert!(methods.len() >= 17, "{methods:?}");
        for method in &methods {
            assert!(permits(Role::Admin, method), "{method}");
            let admin_only = method.ends_with("/AdvanceStates") || method.contains(".TestClock/");
            let others = [Role::Billing, Role::BusinessHall, Role::Bss, Role::Analyst]
                .into_iter()
                .any(|role| permits(role, method));
            assert_eq!(admin_only, !others, "{method}");
            assert!(!is_open(method), "{method}");
        }
    }

    #[test]
    fn the_roles_match_the_brief() {
        let lifecycle = |m: &str| format!("{LIFECYCLE}{m}");
        let expect = |role: Role, allowed: &[&str]| {
            for method in proto_methods() {
                let name = method.rsplit('/').next().unwrap();
                assert_eq!(
                    permits(role, &method),
                    allowed.contains(&name),
                    "{role} {method}"
                );
            }
        };
        expect(
            Role::Billing,
            &[
                "ProvisionAccount",
                "MarkSold",
                "Activate",
                "Recharge",
                "Charge",
                "Authorize",
                "GetAccount",
                "ListAccounts",
                "GetAccountHistory",
            ],
        );
        expect(
            Role::BusinessHall,
            &["Unlock", "Recharge", "GetAccount", "GetAccountHistory"],
        );
        expect(
            Role::Bss,
            &["Subscribe", "ListDeadLetters", "Redeliver", "GetAccount"],
        );
        expect(
            Role::Analyst,
            &["StageComposition", "Flows", "ChurnWarnings", "Cohorts"],
        );
        assert!(!permits(Role::Billing, &lifecycle("Recharge/x")));
    }

    #[test]
    fn health_and_reflection_are_open_and_nothing_else() {
        assert!(is_open("/grpc.health.v1.Health/Check"));
        assert!(is_open("/grpc.health.v1.Health/Watch"));
        assert!(is_open(
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
        ));
        assert!(!is_open("/grpc.health.v1.Health/"));
        assert!(!is_open("/grpc.health.v1.Health/Check/x"));
        assert!(!is_open("/grpc.health.v1.Healthy/Check"));
        assert!(!is_open("/ocs.lifecycle.v1.AccountLifecycle/GetAccount"));
    }
}
