//! Generated host bindings, one module per supported version of `storyline:correlator`.
//!
//! A new WIT version gets its own directory under `wit/` and its own module here; the
//! instance code picks the module by the version the component exports.

/// `storyline:correlator@0.1.0`.
pub mod v0_1_0 {
    wasmtime::component::bindgen!({
        path: "../wit/v0.1.0",
        world: "plugin",
    });
}

/// `storyline:correlator@0.2.0`: events travel packed (see `wit/v0.2.0`).
pub mod v0_2_0 {
    wasmtime::component::bindgen!({
        path: "../wit/v0.2.0",
        world: "plugin",
    });
}
