//! The RAPI resources that are a plain translation to one opcode, as data: method, path (with
//! `{param}` segments that become opcode parameters), opcode, whether the JSON body feeds it,
//! query flags and values, fixed values and body renames. Resources with special code in
//! upstream's rlib2 (create, reinstall, replace-disks, role, console, tags, storage, waits...)
//! stay hand-written in `routes.rs`. `doc/rapi-resources.md` is generated from this table.

use crate::opcodes::OpId;
use serde_json::Value;

/// Where an opcode parameter comes from, besides the path and the body.
#[derive(Debug, Clone, Copy)]
pub enum Param {
    /// `?query=0|1` → a boolean parameter (absent: false).
    Flag(&'static str, &'static str),
    /// `?query=value` → a string parameter, or the default when absent (none: left out).
    Query(&'static str, &'static str, Option<&'static str>),
    /// A constant.
    Fixed(&'static str, bool),
}

#[derive(Debug)]
pub struct OpRoute {
    pub method: &'static str,
    pub path: &'static str,
    pub op: OpId,
    /// rlib2's resource name, for messages about the body.
    pub resource: &'static str,
    /// Whether the JSON body's keys become opcode parameters.
    pub body: bool,
    pub params: &'static [Param],
    /// Body keys renamed before they reach the opcode (`name` → `group_name`).
    pub renames: &'static [(&'static str, &'static str)],
}

use Param::*;

const fn route(
    method: &'static str,
    path: &'static str,
    op: OpId,
    resource: &'static str,
) -> OpRoute {
    OpRoute {
        method,
        path,
        op,
        resource,
        body: true,
        params: &[],
        renames: &[],
    }
}

const fn no_body(mut r: OpRoute) -> OpRoute {
    r.body = false;
    r
}

const fn with(mut r: OpRoute, params: &'static [Param]) -> OpRoute {
    r.params = params;
    r
}

const fn renamed(mut r: OpRoute, renames: &'static [(&'static str, &'static str)]) -> OpRoute {
    r.renames = renames;
    r
}

const INSTANCE: &str = "/2/instances/{instance_name}";

pub static ROUTES: &[OpRoute] = &[
    no_body(route(
        "PUT",
        "/2/redistribute-config",
        OpId::ClusterRedistConf,
        "redist_config",
    )),
    with(
        route("DELETE", INSTANCE, OpId::InstanceRemove, "instances_name"),
        &[Fixed("ignore_failures", false)],
    ),
    with(
        no_body(route(
            "PUT",
            "/2/instances/{instance_name}/startup",
            OpId::InstanceStartup,
            "instances_name_startup",
        )),
        &[Flag("force", "force"), Flag("no_remember", "no_remember")],
    ),
    with(
        route(
            "PUT",
            "/2/instances/{instance_name}/shutdown",
            OpId::InstanceShutdown,
            "instances_name_shutdown",
        ),
        &[Flag("no_remember", "no_remember")],
    ),
    with(
        route(
            "POST",
            "/2/instances/{instance_name}/reboot",
            OpId::InstanceReboot,
            "instances_name_reboot",
        ),
        &[
            Query("type", "reboot_type", Some("hard")),
            Flag("ignore_secondaries", "ignore_secondaries"),
        ],
    ),
    route(
        "PUT",
        "/2/instances/{instance_name}/rename",
        OpId::InstanceRename,
        "instances_name_rename",
    ),
    route(
        "PUT",
        "/2/instances/{instance_name}/migrate",
        OpId::InstanceMigrate,
        "instances_name_migrate",
    ),
    route(
        "PUT",
        "/2/instances/{instance_name}/failover",
        OpId::InstanceFailover,
        "instances_name_failover",
    ),
    with(
        no_body(route(
            "PUT",
            "/2/instances/{instance_name}/activate-disks",
            OpId::InstanceActivateDisks,
            "instances_name_activate_disks",
        )),
        &[Flag("ignore_size", "ignore_size")],
    ),
    with(
        no_body(route(
            "PUT",
            "/2/instances/{instance_name}/deactivate-disks",
            OpId::InstanceDeactivateDisks,
            "instances_name_deactivate_disks",
        )),
        &[Flag("force", "force")],
    ),
    route(
        "POST",
        "/2/instances/{instance_name}/recreate-disks",
        OpId::InstanceRecreateDisks,
        "instances_name_recreate_disks",
    ),
    // Like upstream, a missing mode is not defaulted: the opcode refuses it.
    with(
        no_body(route(
            "PUT",
            "/2/instances/{instance_name}/prepare-export",
            OpId::BackupPrepare,
            "instances_name_prepare_export",
        )),
        &[Query("mode", "mode", None)],
    ),
    renamed(
        route(
            "PUT",
            "/2/instances/{instance_name}/export",
            OpId::BackupExport,
            "instances_name_export",
        ),
        &[("destination", "target_node")],
    ),
    route(
        "POST",
        "/2/nodes/{node_name}/evacuate",
        OpId::NodeEvacuate,
        "nodes_name_evacuate",
    ),
    route(
        "POST",
        "/2/nodes/{node_name}/modify",
        OpId::NodeSetParams,
        "nodes_name_modify",
    ),
    with(
        route(
            "POST",
            "/2/nodes/{node_name}/powercycle",
            OpId::NodePowercycle,
            "nodes_name_powercycle",
        ),
        &[Flag("force", "force")],
    ),
    renamed(
        route("POST", "/2/groups", OpId::GroupAdd, "groups"),
        &[("name", "group_name")],
    ),
    no_body(route(
        "DELETE",
        "/2/groups/{group_name}",
        OpId::GroupRemove,
        "groups_name",
    )),
    renamed(
        route(
            "PUT",
            "/2/groups/{group_name}/modify",
            OpId::GroupSetParams,
            "groups_name_modify",
        ),
        &[
            ("custom_ndparams", "ndparams"),
            ("custom_ipolicy", "ipolicy"),
            ("custom_diskparams", "diskparams"),
        ],
    ),
    route(
        "PUT",
        "/2/groups/{group_name}/rename",
        OpId::GroupRename,
        "groups_name_rename",
    ),
    with(
        route(
            "PUT",
            "/2/groups/{group_name}/assign-nodes",
            OpId::GroupAssignNodes,
            "groups_name_assign_nodes",
        ),
        &[Flag("force", "force")],
    ),
    renamed(
        route("POST", "/2/networks", OpId::NetworkAdd, "networks"),
        &[("name", "network_name")],
    ),
    no_body(route(
        "DELETE",
        "/2/networks/{network_name}",
        OpId::NetworkRemove,
        "networks_name",
    )),
    route(
        "PUT",
        "/2/networks/{network_name}/modify",
        OpId::NetworkSetParams,
        "networks_name_modify",
    ),
    route(
        "PUT",
        "/2/networks/{network_name}/rename",
        OpId::NetworkRename,
        "networks_name_rename",
    ),
    route(
        "PUT",
        "/2/networks/{network_name}/connect",
        OpId::NetworkConnect,
        "networks_name_connect",
    ),
    route(
        "PUT",
        "/2/networks/{network_name}/disconnect",
        OpId::NetworkDisconnect,
        "networks_name_disconnect",
    ),
];

/// The `{param}` values of `path` if `segments` match it (no allocation unless they do: this
/// runs for every route on every request).
fn captures<'a>(path: &'static str, segments: &[&'a str]) -> Option<Vec<(&'static str, &'a str)>> {
    let pattern = || path.trim_start_matches('/').split('/');
    if pattern().count() != segments.len()
        || pattern()
            .zip(segments)
            .any(|(p, s)| !p.starts_with('{') && p != *s)
    {
        return None;
    }
    Some(
        pattern()
            .zip(segments)
            .filter_map(|(p, s)| Some((p.strip_prefix('{')?.strip_suffix('}')?, *s)))
            .collect(),
    )
}

/// The route for this method and path, with the path's parameters.
pub fn find<'a>(
    method: &str,
    segments: &[&'a str],
) -> Option<(&'static OpRoute, Vec<(&'static str, &'a str)>)> {
    ROUTES
        .iter()
        .filter(|r| r.method == method)
        .find_map(|r| captures(r.path, segments).map(|c| (r, c)))
}

/// Whether some route serves this path (with another method): then the answer is 501.
pub fn knows_path(segments: &[&str]) -> bool {
    ROUTES.iter().any(|r| captures(r.path, segments).is_some())
}

impl Param {
    /// The parameter's name and value for a request whose query is read through `flag`/`query`.
    pub fn value<E>(
        &self,
        flag: impl Fn(&str) -> Result<bool, E>,
        query: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<(&'static str, Value)>, E> {
        Ok(match *self {
            Flag(q, name) => Some((name, Value::Bool(flag(q)?))),
            Query(q, name, default) => query(q)
                .or(default.map(String::from))
                .map(|v| (name, Value::String(v))),
            Fixed(name, v) => Some((name, Value::Bool(v))),
        })
    }

    fn describe(&self) -> String {
        match self {
            Flag(q, name) => format!("`?{q}=0` or `1` → `{name}`"),
            Query(q, name, Some(d)) => format!("`?{q}=` → `{name}` (default `{d}`)"),
            Query(q, name, None) => format!("`?{q}=` → `{name}`"),
            Fixed(name, v) => format!("`{name}` = `{v}`"),
        }
    }
}

/// The reference page of these resources (`doc/rapi-resources.md`, checked by a test).
pub fn reference() -> String {
    let mut out = String::from(
        "# RAPI resources that submit one opcode\n\n\
         Generated from `src/rapi/table.rs` (`tests/rapi_table.rs` checks it is current). \
         Every resource also takes `?dry-run=1` and `?reason=`; `{param}` path segments become \
         the opcode parameter of that name. Resources with special handling (instance \
         creation, reinstall, replace-disks, node role, migrate and storage, tags, jobs, \
         queries, filters) are described in upstream's `rapi.rst`.\n\n\
         | method | path | opcode | body | query and fixed parameters |\n\
         |---|---|---|---|---|\n",
    );
    for r in ROUTES {
        let mut params: Vec<String> = r.params.iter().map(Param::describe).collect();
        params.extend(r.renames.iter().map(|(a, b)| format!("body `{a}` → `{b}`")));
        out.push_str(&format!(
            "| {} | `{}` | `{}` | {} | {} |\n",
            r.method,
            r.path,
            r.op,
            if r.body { "yes" } else { "no" },
            params.join(", ")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_names_parameters_its_opcode_has() {
        for r in ROUTES {
            let def = r.op.def();
            let mut names: Vec<&str> = captures(
                r.path,
                &r.path
                    .trim_start_matches('/')
                    .split('/')
                    .collect::<Vec<_>>(),
            )
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
            for p in r.params {
                names.push(match p {
                    Flag(_, n) | Query(_, n, _) | Fixed(n, _) => n,
                });
            }
            names.extend(r.renames.iter().map(|(_, to)| *to));
            for n in names {
                assert!(
                    def.param(n).is_some(),
                    "{} {}: {} has no parameter {n}",
                    r.method,
                    r.path,
                    r.op
                );
            }
        }
    }

    #[test]
    fn no_two_routes_share_method_and_path() {
        for (i, a) in ROUTES.iter().enumerate() {
            for b in &ROUTES[i + 1..] {
                assert!(
                    !(a.method == b.method && a.path == b.path),
                    "{} {}",
                    a.method,
                    a.path
                );
            }
        }
    }

    #[test]
    fn paths_match_with_their_parameters() {
        let (r, caps) = find("PUT", &["2", "instances", "web1", "startup"]).unwrap();
        assert_eq!(r.op, OpId::InstanceStartup);
        assert_eq!(caps, vec![("instance_name", "web1")]);
        assert!(find("GET", &["2", "instances", "web1", "startup"]).is_none());
        assert!(knows_path(&["2", "instances", "web1", "startup"]));
        assert!(!knows_path(&["2", "instances", "web1", "bogus"]));
    }
}
