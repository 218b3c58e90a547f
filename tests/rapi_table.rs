//! `doc/rapi-resources.md` is generated from the RAPI tables (`src/rapi/table.rs`, and the
//! OpenAPI document of `src/rapi/openapi.rs`); fail when
//! the checked-in page differs. Regenerate with `GANTRY_WRITE_DOCS=1 cargo test --test rapi_table`.

#[test]
fn the_resource_reference_is_current() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/doc/rapi-resources.md");
    let generated = gantry::rapi::table::reference() + &gantry::rapi::openapi::resource_list();
    if std::env::var_os("GANTRY_WRITE_DOCS").is_some() {
        std::fs::write(path, &generated).unwrap();
    }
    let checked_in = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "doc/rapi-resources.md is stale: GANTRY_WRITE_DOCS=1 cargo test --test rapi_table"
    );
}
