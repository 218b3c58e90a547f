//! How lists are printed: aligned columns as gnt-* prints them (comfy-table, no borders), or
//! with a separator, or as JSON for scripts.

use comfy_table::Table;
use serde_json::Value;

#[derive(clap::Args, Debug, Clone)]
pub struct ListArgs {
    /// Fields to show, comma separated (as `gnt-* list -o`).
    #[arg(short = 'o', long = "output")]
    pub fields: Option<String>,
    /// Leave out the header line.
    #[arg(long)]
    pub no_headers: bool,
    /// Separate fields with this instead of aligning them.
    #[arg(long)]
    pub separator: Option<String>,
    /// Print JSON: one object per row, keyed by field.
    #[arg(long)]
    pub json: bool,
}

impl ListArgs {
    pub fn fields<'a>(&'a self, default: &'a [&'a str]) -> Vec<String> {
        match &self.fields {
            Some(f) => f.split(',').map(|s| s.trim().to_string()).collect(),
            None => default.iter().map(|s| s.to_string()).collect(),
        }
    }
}

/// A cell as text: strings bare, lists comma-joined, null as "-" (gnt-*'s "unavailable").
pub fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Bool(b) => if *b { "Y" } else { "N" }.into(),
        Value::Array(items) => items.iter().map(text).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

/// Prints rows of cells under `headers` as the list options ask.
pub fn print_rows(args: &ListArgs, headers: &[String], rows: &[Vec<Value>]) {
    if args.json {
        let objects: Vec<Value> = rows
            .iter()
            .map(|row| Value::Object(headers.iter().cloned().zip(row.iter().cloned()).collect()))
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&objects).unwrap_or_default()
        );
        return;
    }
    if let Some(sep) = &args.separator {
        if !args.no_headers {
            println!("{}", headers.join(sep));
        }
        for row in rows {
            println!("{}", row.iter().map(text).collect::<Vec<_>>().join(sep));
        }
        return;
    }
    let mut table = Table::new();
    // No lines: columns two spaces apart, as gnt-* aligns them.
    table.load_style(comfy_table::presets::NOTHING);
    if !args.no_headers {
        table.set_header(headers.iter().map(|h| h.to_string()));
    }
    for row in rows {
        table.add_row(row.iter().map(text));
    }
    for line in table.to_string().lines() {
        // Every line starts with the first cell's one-space padding.
        println!("{}", line.strip_prefix(' ').unwrap_or(line).trim_end());
    }
}

/// Prints one object as `key: value` lines (gnt-* info style), or as JSON.
pub fn print_object(json: bool, v: &Value) {
    if json {
        println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
        return;
    }
    if let Value::Object(m) = v {
        for (k, v) in m {
            println!("{k}: {}", text(v));
        }
    } else {
        println!("{}", text(v));
    }
}
