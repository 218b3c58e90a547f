//! The OpenAPI 3.1 document of every resource gantry serves, generated from the route tables:
//! `table::ROUTES` (resources that submit one opcode) and `HANDWRITTEN` below (the resources
//! `routes.rs` and `mod.rs` serve with their own code). Served at `/openapi.json`, checked in as
//! `doc/openapi.json`; `tests/openapi.rs` keeps both current, validates the document and runs
//! schemathesis against a live server.

use super::table::{self, Param};
use serde_json::{Map, Value, json};

/// What a resource answers with status 200.
#[derive(Clone, Copy)]
enum Answer {
    /// A job id (every mutation).
    JobId,
    Object,
    /// A list of objects, or of `{"id", "uri"}` without `bulk`.
    List,
    Strings,
    Integer,
    /// `null`, or whatever the body of the object is.
    Any,
    /// The Prometheus/OpenMetrics text of `/metrics`.
    Metrics,
    /// A server-sent event stream.
    Events,
    /// vmpooler's answers: `{"ok": ...}` shapes with vmpooler's status codes, errors included.
    Vmpooler,
}

/// Query parameters a resource takes, besides `dry-run` and `reason` of every mutation.
#[derive(Clone, Copy)]
enum Query {
    Bulk,
    Tag,
    Fields,
}

struct Operation {
    method: &'static str,
    summary: &'static str,
    answer: Answer,
    query: &'static [Query],
    /// Takes a JSON body (an object unless `string_body`).
    body: bool,
}

struct Resource {
    path: &'static str,
    ops: &'static [Operation],
}

const fn get(summary: &'static str, answer: Answer) -> Operation {
    Operation {
        method: "GET",
        summary,
        answer,
        query: &[],
        body: false,
    }
}

const fn list(summary: &'static str) -> Operation {
    Operation {
        method: "GET",
        summary,
        answer: Answer::List,
        query: &[Query::Bulk, Query::Fields],
        body: false,
    }
}

const fn submit(method: &'static str, summary: &'static str) -> Operation {
    Operation {
        method,
        summary,
        answer: Answer::JobId,
        query: &[],
        body: true,
    }
}

/// Every tags resource answers the same three methods.
static TAG_OPS: &[Operation] = &[
    get("The tags", Answer::Strings),
    Operation {
        method: "PUT",
        summary: "Add tags (?tag=, repeated); answers a job id",
        answer: Answer::JobId,
        query: &[Query::Tag],
        body: false,
    },
    Operation {
        method: "DELETE",
        summary: "Remove tags (?tag=, repeated); answers a job id",
        answer: Answer::JobId,
        query: &[Query::Tag],
        body: false,
    },
];

const fn tags(path: &'static str) -> Resource {
    Resource { path, ops: TAG_OPS }
}

use Answer::*;

/// The resources with their own code, as `routes::handwritten` and `mod::serve` dispatch them.
static HANDWRITTEN: &[Resource] = &[
    Resource {
        path: "/version",
        ops: &[get("The RAPI version (2)", Integer)],
    },
    Resource {
        path: "/2",
        ops: &[get("The API root (null)", Any)],
    },
    Resource {
        path: "/2/info",
        ops: &[get("Cluster information", Object)],
    },
    Resource {
        path: "/2/features",
        ops: &[get("Optional features this server has", Strings)],
    },
    Resource {
        path: "/2/modify",
        ops: &[submit("PUT", "Modify the cluster (OP_CLUSTER_SET_PARAMS)")],
    },
    tags("/2/tags"),
    Resource {
        path: "/2/os",
        ops: &[get("Installed OS definitions with their variants", Strings)],
    },
    Resource {
        path: "/2/jobs",
        ops: &[
            list("Jobs in the queue"),
            submit(
                "POST",
                "Submit a job of opcodes: {\"ops\": [...]} (gantry extension)",
            ),
        ],
    },
    Resource {
        path: "/2/jobs/{job_id}",
        ops: &[
            get("A job", Object),
            Operation {
                method: "DELETE",
                summary: "Cancel a job: [success, message]",
                answer: Any,
                query: &[],
                body: false,
            },
        ],
    },
    Resource {
        path: "/2/jobs/{job_id}/wait",
        ops: &[get(
            "Wait for a change of a job's status or log (long poll)",
            Any,
        )],
    },
    Resource {
        path: "/2/filters",
        ops: &[
            list("Job filter rules"),
            Operation {
                method: "POST",
                summary: "Add a filter rule; answers its UUID",
                answer: Any,
                query: &[],
                body: true,
            },
        ],
    },
    Resource {
        path: "/2/filters/{filter_uuid}",
        ops: &[
            get("A filter rule", Object),
            Operation {
                method: "PUT",
                summary: "Replace a filter rule; answers its UUID",
                answer: Any,
                query: &[],
                body: true,
            },
            Operation {
                method: "DELETE",
                summary: "Delete a filter rule",
                answer: Any,
                query: &[],
                body: false,
            },
        ],
    },
    Resource {
        path: "/2/instances",
        ops: &[
            list("Instances"),
            submit("POST", "Create an instance (OP_INSTANCE_CREATE)"),
        ],
    },
    Resource {
        path: "/2/instances-multi-alloc",
        ops: &[submit("POST", "Create several instances at once")],
    },
    Resource {
        path: "/2/instances/{instance_name}",
        ops: &[get("An instance", Object)],
    },
    Resource {
        path: "/2/instances/{instance_name}/info",
        ops: &[get(
            "Collect an instance's runtime information; answers a job id",
            JobId,
        )],
    },
    tags("/2/instances/{instance_name}/tags"),
    Resource {
        path: "/2/instances/{instance_name}/disk/{disk_index}/grow",
        ops: &[submit("POST", "Grow a disk (OP_INSTANCE_GROW_DISK)")],
    },
    Resource {
        path: "/2/instances/{instance_name}/reinstall",
        ops: &[submit("POST", "Reinstall an instance's OS")],
    },
    Resource {
        path: "/2/instances/{instance_name}/modify",
        ops: &[submit("PUT", "Modify an instance (OP_INSTANCE_SET_PARAMS)")],
    },
    Resource {
        path: "/2/instances/{instance_name}/replace-disks",
        ops: &[submit("POST", "Replace an instance's disks")],
    },
    Resource {
        path: "/2/instances/{instance_name}/console",
        ops: &[get("How to reach an instance's console", Object)],
    },
    Resource {
        path: "/2/nodes",
        ops: &[list("Nodes")],
    },
    Resource {
        path: "/2/nodes/{node_name}",
        ops: &[get("A node", Object)],
    },
    tags("/2/nodes/{node_name}/tags"),
    Resource {
        path: "/2/nodes/{node_name}/role",
        ops: &[
            get("A node's role", Any),
            Operation {
                method: "PUT",
                summary: "Set a node's role (body: a string); answers a job id",
                answer: JobId,
                query: &[],
                body: false,
            },
        ],
    },
    Resource {
        path: "/2/nodes/{node_name}/migrate",
        ops: &[submit("POST", "Migrate every primary instance off a node")],
    },
    Resource {
        path: "/2/nodes/{node_name}/storage",
        ops: &[get("Query a node's storage units; answers a job id", JobId)],
    },
    Resource {
        path: "/2/nodes/{node_name}/storage/modify",
        ops: &[Operation {
            method: "PUT",
            summary: "Modify a storage unit; answers a job id",
            answer: JobId,
            query: &[],
            body: false,
        }],
    },
    Resource {
        path: "/2/nodes/{node_name}/storage/repair",
        ops: &[Operation {
            method: "PUT",
            summary: "Repair a storage unit; answers a job id",
            answer: JobId,
            query: &[],
            body: false,
        }],
    },
    Resource {
        path: "/2/groups",
        ops: &[list("Node groups")],
    },
    Resource {
        path: "/2/groups/{group_name}",
        ops: &[get("A node group", Object)],
    },
    tags("/2/groups/{group_name}/tags"),
    Resource {
        path: "/2/networks",
        ops: &[list("Networks")],
    },
    Resource {
        path: "/2/networks/{network_name}",
        ops: &[get("A network", Object)],
    },
    tags("/2/networks/{network_name}/tags"),
    Resource {
        path: "/2/query/{resource}",
        ops: &[
            Operation {
                method: "GET",
                summary: "Query objects of a kind (?fields=)",
                answer: Object,
                query: &[Query::Fields],
                body: false,
            },
            Operation {
                method: "PUT",
                summary: "Query objects of a kind with a filter: {\"fields\", \"qfilter\"}",
                answer: Object,
                query: &[],
                body: true,
            },
        ],
    },
    Resource {
        path: "/2/query/{resource}/fields",
        ops: &[Operation {
            method: "GET",
            summary: "The fields of a kind (?fields=)",
            answer: Object,
            query: &[Query::Fields],
            body: false,
        }],
    },
    Resource {
        path: "/metrics",
        ops: &[get("Metrics in OpenMetrics text format", Metrics)],
    },
    Resource {
        path: "/gantry/v1/events",
        ops: &[get(
            "Job changes as server-sent events (gantry extension)",
            Events,
        )],
    },
    Resource {
        path: "/gantry/v1/tokens",
        ops: &[
            get(
                "The caller's API tokens, without secrets (gantry extension)",
                List,
            ),
            Operation {
                method: "POST",
                summary: "Create an API token: {\"rights\": \"read\"|\"write\", \"ttl\": seconds}; \
                          answers it with its secret, shown this once",
                answer: Object,
                query: &[],
                body: true,
            },
        ],
    },
    Resource {
        path: "/gantry/v1/tokens/{token_id}",
        ops: &[
            get("One of the caller's API tokens", Object),
            Operation {
                method: "DELETE",
                summary: "Revoke one of the caller's API tokens",
                answer: Object,
                query: &[],
                body: false,
            },
        ],
    },
    Resource {
        path: "/gantry/v1/leases",
        ops: &[
            list("Leases: instances bound to a time window (gantry extension)"),
            submit(
                "POST",
                "Create a lease: {name, end|duration, before_end|before_end_seconds, \
                 before_end_action, on_end, instances, reservation, tags}",
            ),
        ],
    },
    Resource {
        path: "/gantry/v1/leases/{lease_name}",
        ops: &[
            get("One lease", Object),
            submit(
                "PUT",
                "Move a lease's end (end, duration or extend) or before-end time; tags",
            ),
            Operation {
                method: "DELETE",
                summary: "Forget a lease without running its actions",
                answer: JobId,
                query: &[],
                body: false,
            },
        ],
    },
    Resource {
        path: "/gantry/v1/leases/{lease_name}/end",
        ops: &[Operation {
            method: "POST",
            summary: "End the lease now: its end action runs at once",
            answer: JobId,
            query: &[],
            body: false,
        }],
    },
    Resource {
        path: "/gantry/v1/leases/{lease_name}/instances",
        ops: &[submit(
            "POST",
            "Create an instance for the lease (a /2/instances body): it may use the lease's \
             reservation and joins the lease",
        )],
    },
    Resource {
        path: "/gantry/v1/pools",
        ops: &[
            list("Pools of ready instances (gantry extension)"),
            submit("POST", "Create a pool: {name, size, template, lifetime}"),
        ],
    },
    Resource {
        path: "/gantry/v1/pools/{pool_name}",
        ops: &[
            get("One pool, with its ready and checked-out counts", Object),
            submit("PUT", "Change a pool's size, template or default lifetime"),
            Operation {
                method: "DELETE",
                summary: "Remove a pool and its ready instances",
                answer: JobId,
                query: &[],
                body: false,
            },
        ],
    },
    Resource {
        path: "/gantry/v1/pools/{pool_name}/checkout",
        ops: &[submit(
            "POST",
            "Check out a ready instance: {lifetime, tags}; the job's result names it",
        )],
    },
    Resource {
        path: "/api/v1/vm",
        ops: &[
            get("vmpooler: the pools", Vmpooler),
            Operation {
                method: "POST",
                summary: "vmpooler: check out VMs, {\"pool\": \"count\"}, all or none",
                answer: Vmpooler,
                query: &[],
                body: true,
            },
        ],
    },
    Resource {
        path: "/api/v1/vm/{hostname}",
        ops: &[
            get("vmpooler: a checked-out VM", Vmpooler),
            Operation {
                method: "POST",
                summary: "vmpooler: check out one VM per pool named (the segment is \
                          pool+pool...)",
                answer: Vmpooler,
                query: &[],
                body: false,
            },
            Operation {
                method: "PUT",
                summary: "vmpooler: change a VM's lifetime (hours) or tags",
                answer: Vmpooler,
                query: &[],
                body: true,
            },
            Operation {
                method: "DELETE",
                summary: "vmpooler: give a VM back (its lease ends now)",
                answer: Vmpooler,
                query: &[],
                body: false,
            },
        ],
    },
    Resource {
        path: "/api/v1/vm/{hostname}/disk/{size}",
        ops: &[Operation {
            method: "POST",
            summary: "vmpooler: add a disk of size GB",
            answer: Vmpooler,
            query: &[],
            body: false,
        }],
    },
    Resource {
        path: "/api/v1/status",
        ops: &[get("vmpooler: capacity, queue and pool status", Vmpooler)],
    },
    Resource {
        path: "/api/v1/summary",
        ops: &[get(
            "vmpooler: clone times and tags by day (?from=, ?to=)",
            Vmpooler,
        )],
    },
    Resource {
        path: "/api/v1/token",
        ops: &[
            get("vmpooler: the caller's tokens", Vmpooler),
            Operation {
                method: "POST",
                summary: "vmpooler: create a token",
                answer: Vmpooler,
                query: &[],
                body: false,
            },
        ],
    },
    Resource {
        path: "/api/v1/token/{token}",
        ops: &[
            get("vmpooler: one token and its running VMs", Vmpooler),
            Operation {
                method: "DELETE",
                summary: "vmpooler: revoke a token",
                answer: Vmpooler,
                query: &[],
                body: false,
            },
        ],
    },
    Resource {
        path: "/api/v1/ondemandvm",
        ops: &[Operation {
            method: "POST",
            summary: "vmpooler: request VMs on demand, {\"pool\": \"count\"}",
            answer: Vmpooler,
            query: &[],
            body: true,
        }],
    },
    Resource {
        path: "/api/v1/ondemandvm/{request_id}",
        ops: &[
            get("vmpooler: an on-demand request (202 until ready)", Vmpooler),
            Operation {
                method: "DELETE",
                summary: "vmpooler: withdraw an on-demand request",
                answer: Vmpooler,
                query: &[],
                body: false,
            },
        ],
    },
    Resource {
        path: "/openapi.json",
        ops: &[get("This document", Object)],
    },
];

fn schema(answer: Answer) -> (&'static str, Value) {
    let json_of = |s: Value| ("application/json", s);
    match answer {
        JobId => json_of(json!({"type": "integer", "minimum": 1})),
        Object => json_of(json!({"type": "object"})),
        List => json_of(json!({"type": "array", "items": {"type": "object"}})),
        Strings => json_of(json!({"type": "array", "items": {"type": "string"}})),
        Integer => json_of(json!({"type": "integer"})),
        Any => json_of(json!({})),
        Metrics => ("application/openmetrics-text", json!({"type": "string"})),
        Events => ("text/event-stream", json!({"type": "string"})),
        Vmpooler => json_of(json!({"type": ["object", "array"]})),
    }
}

fn query_param(name: &str, description: &str, schema: Value) -> Value {
    json!({"name": name, "in": "query", "required": false, "description": description,
           "schema": schema})
}

fn flag(name: &str, description: &str) -> Value {
    query_param(
        name,
        description,
        json!({"type": "integer", "enum": [0, 1]}),
    )
}

fn operation(summary: &str, answer: Answer, mut params: Vec<Value>, body: bool) -> Value {
    if matches!(answer, JobId) {
        params.push(flag(
            "dry-run",
            "Check only: the job runs its checks, changes nothing",
        ));
        params.push(query_param(
            "reason",
            "Why: recorded in the job's reason trail",
            json!({"type": "string"}),
        ));
    }
    let vmpooler = matches!(answer, Vmpooler);
    let (content_type, answer_schema) = schema(answer);
    let mut op = json!({
        "summary": summary,
        "parameters": params,
        "responses": {
            "200": {"description": "OK", "content": {content_type: {"schema": answer_schema}}},
            "default": {"description": "An error in Ganeti's format",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
        },
    });
    if vmpooler {
        op["responses"] = json!({"default": {
            "description": "vmpooler's answer and status code (errors are {\"ok\": false})",
            "content": {content_type: {"schema": answer_schema}}}});
    }
    if body {
        op["requestBody"] = json!({"required": false, "content": {"application/json": {
            "schema": {"type": "object"}}}});
    }
    op
}

fn path_params(path: &str) -> Vec<Value> {
    path.split('/')
        .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
        .map(|name| {
            // Examples name what a new fake cluster has (and the instance the tests create).
            let (schema, example) = match name {
                "job_id" => (json!({"type": "integer", "minimum": 0}), json!(1)),
                "disk_index" => (json!({"type": "integer", "minimum": 0}), json!(0)),
                _ => (
                    json!({"type": "string", "pattern": "^[A-Za-z0-9._-]+$"}),
                    json!(match name {
                        "instance_name" => "web1.example.com",
                        "node_name" => "node1.example.com",
                        "group_name" => "default",
                        "network_name" => "net1",
                        "resource" => "instance",
                        "token_id" => "000000000000",
                        "lease_name" => "night",
                        "pool_name" => "debian-12",
                        "hostname" => "debian-12-00000000",
                        "size" => "8",
                        "request_id" => "00000000-0000-0000-0000-000000000000",
                        "token" => "gt_000000000000_0",
                        _ => "name",
                    }),
                ),
            };
            json!({"name": name, "in": "path", "required": true, "schema": schema,
                   "example": example})
        })
        .collect()
}

fn table_params(params: &[Param]) -> Vec<Value> {
    params
        .iter()
        .filter_map(|p| match *p {
            Param::Flag(q, name) => Some(flag(q, &format!("Sets the opcode's {name}"))),
            Param::Query(q, name, _) => Some(query_param(
                q,
                &format!("The opcode's {name}"),
                json!({"type": "string"}),
            )),
            Param::Fixed(..) => None,
        })
        .collect()
}

/// The whole document.
pub fn document() -> Value {
    let mut paths: Map<String, Value> = Map::new();
    let mut add = |path: &str, method: &str, op: Value| {
        let entry = paths.entry(path.to_string()).or_insert_with(|| json!({}));
        entry[method.to_lowercase()] = op;
    };
    for r in HANDWRITTEN {
        for o in r.ops {
            let mut params = path_params(r.path);
            for q in o.query {
                params.push(match q {
                    Query::Bulk => flag("bulk", "Every object in full, not only ids and URIs"),
                    Query::Tag => query_param(
                        "tag",
                        "A tag (repeat for several)",
                        json!({"type": "string"}),
                    ),
                    Query::Fields => query_param(
                        "fields",
                        "Comma-separated field names",
                        json!({"type": "string"}),
                    ),
                });
            }
            add(
                r.path,
                o.method,
                operation(o.summary, o.answer, params, o.body),
            );
        }
    }
    for r in table::ROUTES {
        let mut params = path_params(r.path);
        params.extend(table_params(r.params));
        let summary = format!("Submit {} (answers a job id)", r.op);
        add(r.path, r.method, operation(&summary, JobId, params, r.body));
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "gantry: the Ganeti Remote API (RAPI v2)",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Every mutation answers a job id; poll /2/jobs/{job_id}. GET needs no \
                user unless the server requires authentication (queries, console: read; job \
                waits, node storage: write); every other method needs a user with write rights.",
        },
        "components": {
            "schemas": {
                "Error": {"type": "object", "required": ["code", "message"], "properties": {
                    "code": {"type": "integer"}, "message": {"type": "string"},
                    "explain": {"type": "string"}}},
            },
            "securitySchemes": {"basic": {"type": "http", "scheme": "basic"},
                                "token": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"basic": []}, {"token": []}, {}],
        "paths": paths,
    })
}

/// Every resource and method as a Markdown table, from the document (for `doc/rapi-resources.md`).
pub fn resource_list() -> String {
    let doc = document();
    let mut out = String::from(
        "\n# Every resource\n\nGenerated from the OpenAPI document (`/openapi.json`, \
         `doc/openapi.json`), itself generated from the route tables.\n\n\
         | method | path | what |\n|---|---|---|\n",
    );
    if let Some(paths) = doc["paths"].as_object() {
        let mut paths: Vec<_> = paths.iter().collect();
        paths.sort_by(|a, b| a.0.cmp(b.0));
        for (path, ops) in paths {
            for method in ["get", "put", "post", "delete"] {
                if let Some(summary) = ops[method]["summary"].as_str() {
                    out.push_str(&format!(
                        "| {} | `{path}` | {} |\n",
                        method.to_uppercase(),
                        summary.replace('|', "\\|")
                    ));
                }
            }
        }
    }
    out
}

/// Path templates of the document as patterns: a segment, or `None` for a `{param}`.
type Pattern = (Vec<Option<String>>, String);

static PATTERNS: std::sync::LazyLock<Vec<Pattern>> = std::sync::LazyLock::new(|| {
    let doc = document();
    let mut patterns: Vec<Pattern> = doc["paths"]
        .as_object()
        .map(|paths| {
            paths
                .keys()
                .map(|path| {
                    let segments = path
                        .split('/')
                        .filter(|s| !s.is_empty())
                        .map(|s| (!s.starts_with('{')).then(|| s.to_string()))
                        .collect();
                    (segments, path.clone())
                })
                .collect()
        })
        .unwrap_or_default();
    // Literal segments before parameters: `/2/instances/{x}/tags` is not `/2/instances/{x}/{y}`.
    patterns.sort_by_key(|(segments, _)| segments.iter().filter(|s| s.is_none()).count());
    patterns
});

/// The documented path template a request's path matches (`/2/instances/{instance_name}`), or
/// `other`: a label of bounded cardinality for metrics.
pub fn route_of(segments: &[&str]) -> &'static str {
    PATTERNS
        .iter()
        .find(|(pattern, _)| {
            pattern.len() == segments.len()
                && pattern
                    .iter()
                    .zip(segments)
                    .all(|(p, s)| p.as_deref().is_none_or(|p| p == *s))
        })
        .map_or("other", |(_, path)| path.as_str())
}
