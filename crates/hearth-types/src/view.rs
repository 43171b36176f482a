//! This node's whole local view of the cluster, and the service rows the API serves from it.

use std::collections::BTreeMap;
use std::net::IpAddr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::member::{CheckStatus, Member, MemberRow, MemberState, ServiceInstance};

/// This node's whole local view of the cluster. DNS, the API and metrics read it;
/// only the membership task writes it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct View {
    pub self_name: String,
    pub members: BTreeMap<String, Member>,
}

impl View {
    /// Addresses of instances of `service` that pass their check on nodes that are up.
    pub fn healthy_instances<'a>(&'a self, service: &'a str) -> impl Iterator<Item = IpAddr> + 'a {
        self.instances_on_up_nodes(service)
            .filter(|instance| instance.status == CheckStatus::Passing)
            .map(|instance| instance.address)
    }

    /// Every instance of `service` on a node that is up, whatever its check says.
    pub fn instances_on_up_nodes<'a>(
        &'a self,
        service: &'a str,
    ) -> impl Iterator<Item = &'a ServiceInstance> + 'a {
        self.members
            .values()
            .filter(|member| member.state.is_up())
            .flat_map(|member| member.services.iter())
            .filter(move |instance| instance.service.eq_ignore_ascii_case(service))
    }
}

/// A row of `hearth services`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ServiceRow {
    pub service: String,
    pub node: String,
    pub address: IpAddr,
    pub status: CheckStatus,
    pub node_state: MemberState,
}

impl View {
    pub fn member_rows(&self) -> Vec<MemberRow> {
        self.members.values().map(Member::row).collect()
    }

    pub fn service_rows(&self) -> Vec<ServiceRow> {
        let mut rows: Vec<ServiceRow> = self
            .members
            .values()
            .flat_map(|member| {
                member.services.iter().map(move |instance| ServiceRow {
                    service: instance.service.clone(),
                    node: member.meta.name.clone(),
                    address: instance.address,
                    status: instance.status,
                    node_state: member.state,
                })
            })
            .collect();
        rows.sort_by(|a, b| (&a.service, &a.node).cmp(&(&b.service, &b.node)));
        rows
    }
}
