//! Opcodes gantry accepts beyond the spec's RAPI catalog (submitted through `POST /2/jobs`).
//! Kept apart from the generated `catalog.rs`, which `tools/gen_catalog.py` rewrites.

use super::schema::{Default::*, OpDef, ParamDef, ParamType::*};

pub static EXTRA_OPCODES: &[OpDef] = &[
    // Upstream `OpNodeAdd` (gnt-node add), with the parameters gantry uses. A node on another
    // machine names its agent in `ndparams.agent_address` (`https://host:port`).
    OpDef {
        id: "OP_NODE_ADD",
        params: &[
            ParamDef {
                name: "node_name",
                ty: NonEmptyStr,
                default: Required,
            },
            ParamDef {
                name: "primary_ip",
                ty: NonEmptyStr,
                default: Unset,
            },
            ParamDef {
                name: "secondary_ip",
                ty: NonEmptyStr,
                default: Unset,
            },
            ParamDef {
                name: "readd",
                ty: Bool,
                default: Value(r#"false"#),
            },
            ParamDef {
                name: "group",
                ty: NonEmptyStr,
                default: Unset,
            },
            ParamDef {
                name: "master_capable",
                ty: Bool,
                default: Unset,
            },
            ParamDef {
                name: "vm_capable",
                ty: Bool,
                default: Unset,
            },
            ParamDef {
                name: "ndparams",
                ty: Object,
                default: Unset,
            },
        ],
    },
];
