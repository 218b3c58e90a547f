//! The logical units: for every opcode, the locks it needs (computed with name expansion, before
//! any lock is taken) and its checks and execution against the cluster model and the backend.

mod cluster;
mod group;
mod instance;
mod lease;
mod network;
mod node;
mod recorded;
mod tags;

pub use lease::pool_create_op;
pub use node::node_spec;
pub use recorded::recorded_params;

use crate::backends::{Backend, BackendError, BoxFuture, FailureKind, VmSpec};
use crate::cluster::model::{Config, Instance, Node};
use crate::cluster::{ClusterStore, names};
use crate::locking::LockPlan;
use crate::opcodes::OpId;
use crate::opcodes::{ErrorCode, OpCode};
use crate::validate::{DiskId, HostName, MacAddr};
use serde_json::{Value, json};
use std::sync::Arc;

/// A failed opcode, encoded as Ganeti's `[class, args]` (spec jobs.md §6.2).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{class}: {message}")]
pub struct OpError {
    pub class: &'static str,
    pub message: String,
    pub ecode: Option<ErrorCode>,
}

impl OpError {
    pub fn prereq(message: impl Into<String>, ecode: ErrorCode) -> OpError {
        OpError {
            class: "OpPrereqError",
            message: message.into(),
            ecode: Some(ecode),
        }
    }

    /// The few upstream prerequisite checks that carry no ecode.
    pub fn prereq_bare(message: impl Into<String>) -> OpError {
        OpError {
            class: "OpPrereqError",
            message: message.into(),
            ecode: None,
        }
    }

    pub fn exec(message: impl Into<String>) -> OpError {
        OpError {
            class: "OpExecError",
            message: message.into(),
            ecode: None,
        }
    }

    pub fn tag(message: impl Into<String>) -> OpError {
        OpError {
            class: "TagError",
            message: message.into(),
            ecode: None,
        }
    }

    pub fn to_json(&self) -> Value {
        match self.ecode {
            Some(code) => json!([self.class, [self.message, code.as_str()]]),
            None => json!([self.class, [self.message]]),
        }
    }
}

impl From<crate::cluster::ConfigError> for OpError {
    fn from(e: crate::cluster::ConfigError) -> OpError {
        OpError {
            class: "ConfigurationError",
            message: e.to_string(),
            ecode: None,
        }
    }
}

impl From<crate::cluster::params::HvParamsError> for OpError {
    fn from(e: crate::cluster::params::HvParamsError) -> OpError {
        use crate::cluster::params::HvParamsError::*;
        match e {
            Type(t) => t.into(),
            NotSupported(_) => OpError {
                class: "HypervisorError",
                message: e.to_string(),
                ecode: None,
            },
        }
    }
}

impl From<crate::cluster::params::NicParamsError> for OpError {
    fn from(e: crate::cluster::params::NicParamsError) -> OpError {
        use crate::cluster::params::NicParamsError::*;
        match e {
            Type(t) => t.into(),
            Mode(_) => OpError {
                class: "ConfigurationError",
                message: e.to_string(),
                ecode: None,
            },
        }
    }
}

impl From<crate::cluster::params::TypeEnforcementError> for OpError {
    fn from(e: crate::cluster::params::TypeEnforcementError) -> OpError {
        OpError {
            class: "TypeEnforcementError",
            message: e.0,
            ecode: None,
        }
    }
}

/// Backend failures during checks: unreachable nodes are environment errors.
pub fn check_failure(what: &str, e: BackendError) -> OpError {
    match e.kind {
        FailureKind::NodeUnreachable => OpError::prereq(
            format!("{what}: {}", e.message),
            ErrorCode::EnvironmentError,
        ),
        FailureKind::InsufficientResources => {
            OpError::prereq(e.message, ErrorCode::InsufficientResources)
        }
        FailureKind::OperationFailed => OpError::exec(format!("{what}: {}", e.message)),
    }
}

/// Backend failures while executing are `OpExecError`.
pub fn exec_failure(what: &str, e: BackendError) -> OpError {
    OpError::exec(format!("{what}: {}", e.message))
}

/// Operations that answer by submitting more jobs (spec jobs.md §18.2) use this.
pub trait JobSubmitter: Send + Sync {
    fn submit_jobs(&self, jobs: Vec<Vec<OpCode>>) -> BoxFuture<'_, Result<Vec<Value>, OpError>>;
}

/// Appends a log entry `(type, message)` to the running opcode.
pub type Feedback = Arc<dyn Fn(&str, Value) + Send + Sync>;

/// What an executing opcode may use.
pub struct Ctx {
    pub op: OpCode,
    pub job_id: u64,
    pub cluster: ClusterStore,
    pub backend: Arc<dyn Backend>,
    pub feedback: Feedback,
    pub jobs: Arc<dyn JobSubmitter>,
}

pub const DRY_RUN_NOTICE: &str =
    " - INFO: dry-run mode requested, not actually executing the operation";

impl Ctx {
    pub fn log(&self, text: impl Into<String>) {
        (self.feedback)("message", Value::String(text.into()));
    }

    pub fn info(&self, text: impl AsRef<str>) {
        self.log(format!(" - INFO: {}", text.as_ref()));
    }

    pub fn warn(&self, text: impl AsRef<str>) {
        self.log(format!(" - WARNING: {}", text.as_ref()));
    }

    pub fn cfg(&self) -> Arc<Config> {
        self.cluster.snapshot()
    }

    /// True (after logging the notice) when the opcode must stop before executing.
    pub fn stop_for_dry_run(&self) -> bool {
        if self.op.dry_run() {
            self.log(DRY_RUN_NOTICE);
        }
        self.op.dry_run()
    }

    /// Submits follow-up jobs: they inherit priority, a comment and the parent's reason trail.
    /// In dry-run nothing is submitted and the answer is empty (spec jobs.md §18.2).
    pub async fn submit_children(&self, jobs: Vec<Vec<OpCode>>) -> Result<Vec<Value>, OpError> {
        if self.stop_for_dry_run() {
            return Ok(vec![]);
        }
        let parent_reason = self.op.get("reason").cloned().unwrap_or(json!([]));
        let comment = format!("Submitted by {}", self.op.id());
        let jobs = jobs
            .into_iter()
            .map(|ops| {
                ops.into_iter()
                    .map(|mut op| {
                        op.set("priority", json!(self.op.priority()));
                        if op.get("comment").is_none() {
                            op.set("comment", json!(comment));
                        }
                        if let (Some(Value::Array(own)), Value::Array(parent)) =
                            (op.get("reason").cloned(), &parent_reason)
                        {
                            let mut trail = own;
                            trail.extend(parent.iter().cloned());
                            op.set("reason", Value::Array(trail));
                        }
                        op
                    })
                    .collect()
            })
            .collect();
        self.jobs.submit_jobs(jobs).await
    }
}

/// The logical units, one room each (as upstream's `lib/cmdlib/*.py`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unit {
    Instance,
    Node,
    Group,
    Network,
    Tags,
    Cluster,
    Lease,
}

/// Which unit runs an opcode. Exhaustive on purpose: an opcode added to the catalog without a
/// logical unit does not compile.
fn unit(id: OpId) -> Unit {
    use OpId::*;
    match id {
        InstanceCreate
        | InstanceSetParams
        | InstanceMultiAlloc
        | InstanceRemove
        | InstanceStartup
        | InstanceShutdown
        | InstanceReboot
        | InstanceReinstall
        | InstanceRename
        | InstanceMigrate
        | InstanceFailover
        | InstanceReplaceDisks
        | InstanceActivateDisks
        | InstanceDeactivateDisks
        | InstanceRecreateDisks
        | InstanceGrowDisk
        | BackupPrepare
        | BackupExport
        | BackupRemove
        | InstanceConsole
        | InstanceQueryData
        | InstanceChangeGroup => Unit::Instance,
        NodeEvacuate | NodeMigrate | NodeSetParams | NodePowercycle | NodeQueryStorage
        | NodeModifyStorage | RepairNodeStorage | NodeAdd => Unit::Node,
        GroupAdd | GroupRemove | GroupRename | GroupSetParams | GroupAssignNodes
        | GroupEvacuate => Unit::Group,
        NetworkAdd | NetworkRemove | NetworkSetParams | NetworkRename | NetworkConnect
        | NetworkDisconnect => Unit::Network,
        TagsSet | TagsDel | TagsGet | TagsSearch => Unit::Tags,
        ClusterSetParams | ClusterRedistConf | ClusterQuery | ClusterVerifyConfig | OsDiagnose
        | Query | QueryFields | TestDelay => Unit::Cluster,
        GantryLeaseCreate
        | GantryLeaseModify
        | GantryLeaseRemove
        | GantryLeaseEvent
        | GantryPoolSet
        | GantryPoolRemove
        | GantryPoolCheckout
        | GantryPoolRequest
        | GantryPoolRequestDelete => Unit::Lease,
    }
}

/// Name expansion and the lock plan (spec jobs.md §4.2 step 3–4): runs before any lock is taken.
pub fn plan(op: &OpCode, cfg: &Config) -> Result<LockPlan, OpError> {
    match unit(op.id()) {
        Unit::Instance => instance::plan(op, cfg),
        Unit::Node => node::plan(op, cfg),
        Unit::Group => group::plan(op, cfg),
        Unit::Network => network::plan(op, cfg),
        Unit::Tags => tags::plan(op, cfg),
        Unit::Cluster => cluster::plan(op, cfg),
        Unit::Lease => lease::plan(op, cfg),
    }
}

pub async fn execute(ctx: &Ctx) -> Result<Value, OpError> {
    use OpId::*;
    if matches!(
        ctx.op.id(),
        OsDiagnose | InstanceCreate | InstanceReinstall | InstanceSetParams
    ) {
        refresh_os(ctx).await?;
    }
    match unit(ctx.op.id()) {
        Unit::Instance => instance::execute(ctx).await,
        Unit::Node => node::execute(ctx).await,
        Unit::Group => group::execute(ctx).await,
        Unit::Network => network::execute(ctx).await,
        Unit::Tags => tags::execute(ctx).await,
        Unit::Cluster => cluster::execute(ctx).await,
        Unit::Lease => lease::execute(ctx).await,
    }
}

/// Backends with OS definitions on disk (kvm) are asked what is installed now, so an OS added
/// to the search path is usable without a restart (as `gnt-os list` sees it at once).
async fn refresh_os(ctx: &Ctx) -> Result<(), OpError> {
    let Some(installed) = ctx.backend.installed_os().await else {
        return Ok(());
    };
    if ctx.cfg().os != installed {
        ctx.cluster.update(|c| c.os = installed).await?;
    }
    Ok(())
}

// ---- lookups shared by the units ----

/// Finds an instance by full name or by a unique short name (`web1` for `web1.example.com`).
pub fn find_instance<'a>(cfg: &'a Config, name: &str) -> Result<&'a Instance, OpError> {
    names::instance(cfg, name).ok_or_else(|| {
        OpError::prereq(
            format!("Instance '{name}' not known"),
            ErrorCode::UnknownEntity,
        )
    })
}

pub fn find_node<'a>(cfg: &'a Config, name: &str) -> Result<&'a Node, OpError> {
    names::node(cfg, name).ok_or_else(|| {
        OpError::prereq(format!("Node '{name}' not known"), ErrorCode::UnknownEntity)
    })
}

pub fn find_group_uuid(cfg: &Config, name: &str) -> Result<String, OpError> {
    cfg.group_by_name(name)
        .map(|g| g.meta.uuid.clone())
        .ok_or_else(|| {
            OpError::prereq(
                format!("Node group '{name}' not found"),
                ErrorCode::UnknownEntity,
            )
        })
}

pub fn find_network_uuid(cfg: &Config, name: &str) -> Result<String, OpError> {
    cfg.network_by_name(name)
        .map(|n| n.meta.uuid.clone())
        .ok_or_else(|| {
            OpError::prereq(
                format!("Network '{name}' not found"),
                ErrorCode::UnknownEntity,
            )
        })
}

/// The instance named by the opcode, with the UUID guard applied.
pub fn op_instance<'a>(op: &OpCode, cfg: &'a Config) -> Result<&'a Instance, OpError> {
    let inst = find_instance(cfg, op.str("instance_name").unwrap_or_default())?;
    uuid_guard(
        "instance",
        op.str("instance_uuid"),
        &inst.meta.uuid,
        &inst.name,
    )?;
    Ok(inst)
}

/// The node named by the opcode, with the UUID guard applied.
pub fn op_node<'a>(op: &OpCode, cfg: &'a Config) -> Result<&'a Node, OpError> {
    let node = find_node(cfg, op.str("node_name").unwrap_or_default())?;
    uuid_guard("node", op.str("node_uuid"), &node.meta.uuid, &node.name)?;
    Ok(node)
}

/// A `*_uuid` parameter must match the object found by name (spec opcodes.md §1.2).
fn uuid_guard(kind: &str, given: Option<&str>, actual: &str, name: &str) -> Result<(), OpError> {
    match given {
        Some(uuid) if uuid != actual => Err(OpError::prereq(
            format!(
                "The {kind}s UUID '{uuid}' does not match the expected UUID '{actual}' for {kind} '{name}'. Maybe the {kind} changed since you submitted this job."
            ),
            ErrorCode::ResourceNotUnique,
        )),
        _ => Ok(()),
    }
}

/// What a backend is told about an instance. Fails (rather than handing a backend something it
/// must not use) when the configuration holds a name, MAC or disk id that is not valid.
pub fn vm_spec(cfg: &Config, inst: &Instance) -> Result<VmSpec, OpError> {
    let invalid =
        |e: String| OpError::exec(format!("Instance {}: {e} in the configuration", inst.name));
    Ok(VmSpec {
        name: HostName::new(inst.name.clone()).map_err(invalid)?,
        uuid: inst.meta.uuid.clone(),
        memory_mib: crate::cluster::model::instance_memory(cfg, inst),
        vcpus: crate::cluster::model::instance_vcpus(cfg, inst),
        disks_mib: inst.disks.iter().map(|d| d.size).collect(),
        disk_ids: inst
            .disks
            .iter()
            .map(|d| DiskId::new(d.uuid.clone()))
            .collect::<Result<_, _>>()
            .map_err(invalid)?,
        macs: inst
            .nics
            .iter()
            .map(|n| MacAddr::new(n.mac.clone()))
            .collect::<Result<_, _>>()
            .map_err(invalid)?,
        os: inst.os.clone(),
        osparams: os_param_texts(&inst.osparams),
        reinstall: false,
        nics: inst.nics.iter().map(|n| nic_net(cfg, n)).collect(),
        disk_template: inst.disk_template.clone(),
        vg_name: cfg.cluster.volume_group_name.clone(),
        boot: kernel_boot(&cfg.effective_hvparams(inst)),
    })
}

/// A NIC's mode and link, the cluster's nicparams filling what the NIC leaves empty.
fn nic_net(cfg: &Config, nic: &crate::cluster::model::Nic) -> crate::backends::NicNet {
    let default = |key: &str| {
        cfg.cluster
            .nicparams
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let or_default = |value: &str, key: &str| {
        if value.is_empty() {
            default(key)
        } else {
            value.to_string()
        }
    };
    let mode = or_default(&nic.mode, "mode");
    // A routed NIC without a link uses the main routing table, not the default bridge's name.
    let link = match mode.as_str() {
        "routed" => nic.link.clone(),
        _ => or_default(&nic.link, "link"),
    };
    crate::backends::NicNet {
        mode,
        link,
        ip: nic.ip.clone().filter(|ip| !ip.is_empty()),
        vlan: nic.vlan.clone(),
    }
}

/// Direct kernel boot as Ganeti's kvm hypervisor builds it: `-kernel kernel_path`, `-initrd
/// initrd_path`, `-append "root=<root_path> <kernel_args>"` plus `console=ttyS0,<speed>` with
/// `serial_console`. An empty `kernel_path` boots from the disk.
fn kernel_boot(hv: &crate::cluster::model::Params) -> Option<crate::backends::KernelBoot> {
    let text = |key: &str| hv.get(key).and_then(Value::as_str).unwrap_or_default();
    let kernel = text("kernel_path");
    if kernel.is_empty() {
        return None;
    }
    let mut append = Vec::new();
    if !text("root_path").is_empty() {
        append.push(format!("root={}", text("root_path")));
    }
    if !text("kernel_args").is_empty() {
        append.push(text("kernel_args").to_string());
    }
    if hv.get("serial_console").and_then(Value::as_bool) == Some(true) {
        let speed = hv
            .get("serial_speed")
            .and_then(Value::as_u64)
            .unwrap_or(38400);
        append.push(format!("console=ttyS0,{speed}"));
    }
    Some(crate::backends::KernelBoot {
        kernel: kernel.to_string(),
        initrd: Some(text("initrd_path").to_string()).filter(|p| !p.is_empty()),
        append: append.join(" "),
    })
}

/// OS parameters as the OS scripts see them: strings as they are, anything else as JSON.
pub fn os_param_texts(
    params: &crate::cluster::model::Params,
) -> std::collections::BTreeMap<String, String> {
    params
        .iter()
        .map(|(k, v)| {
            let text = v.as_str().map_or_else(|| v.to_string(), String::from);
            (k.clone(), text)
        })
        .collect()
}

pub fn check_node_online(node: &Node, prefix: &str) -> Result<(), OpError> {
    if node.offline {
        return Err(OpError::prereq(
            format!("{prefix}{}", node.name),
            ErrorCode::WrongState,
        ));
    }
    Ok(())
}

/// Tag syntax (spec opcodes.md §1.6).
pub fn check_tag(tag: &str) -> Result<(), OpError> {
    if tag.is_empty() {
        return Err(OpError::tag("Tags cannot be empty"));
    }
    if tag.chars().count() > 128 {
        return Err(OpError::tag("Tag too long (>128 characters)"));
    }
    let ok = tag
        .chars()
        .all(|c| c.is_alphanumeric() || "_.+*/:@-".contains(c));
    if !ok {
        return Err(OpError::tag("Tag contains invalid characters"));
    }
    Ok(())
}

pub fn now() -> f64 {
    crate::util::now_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_encode_with_and_without_ecode() {
        let e = OpError::prereq("Instance 'web9' not known", ErrorCode::UnknownEntity);
        assert_eq!(
            e.to_json(),
            json!([
                "OpPrereqError",
                ["Instance 'web9' not known", "unknown_entity"]
            ])
        );
        assert_eq!(
            OpError::prereq_bare("Duration must be greater than zero").to_json(),
            json!(["OpPrereqError", ["Duration must be greater than zero"]])
        );
        assert_eq!(
            OpError::exec("boom").to_json(),
            json!(["OpExecError", ["boom"]])
        );
    }

    #[test]
    fn every_ecode_has_its_wire_name() {
        let all = [
            (ErrorCode::ResolverError, "resolver_error"),
            (ErrorCode::InsufficientResources, "insufficient_resources"),
            (
                ErrorCode::TempInsufficientResources,
                "temp_insufficient_resources",
            ),
            (ErrorCode::WrongInput, "wrong_input"),
            (ErrorCode::WrongState, "wrong_state"),
            (ErrorCode::UnknownEntity, "unknown_entity"),
            (ErrorCode::AlreadyExists, "already_exists"),
            (ErrorCode::ResourceNotUnique, "resource_not_unique"),
            (ErrorCode::InternalError, "internal_error"),
            (ErrorCode::EnvironmentError, "environment_error"),
        ];
        for (code, wire) in all {
            assert_eq!(
                OpError::prereq("m", code).to_json(),
                json!(["OpPrereqError", ["m", wire]])
            );
        }
    }

    #[test]
    fn tag_syntax() {
        assert!(check_tag("env:prod").is_ok());
        assert_eq!(check_tag("").unwrap_err().message, "Tags cannot be empty");
        assert_eq!(
            check_tag("a b").unwrap_err().message,
            "Tag contains invalid characters"
        );
        assert!(check_tag(&"x".repeat(129)).is_err());
    }
}
