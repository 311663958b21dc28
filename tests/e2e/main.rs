//! End-to-end tests: the real `storyline` binary and library, the real plugins built for
//! wasm32-wasip2. One test binary, modules by area.

mod support;

mod cli_plugin;
mod config;
mod crash;
mod hot_reload;
mod http;
mod input_formats;
mod intake;
mod late_writes;
mod network_session;
mod plugin_faults;
mod plugin_loading;
mod quality;
mod run_loop;
mod sandbox;
mod scaffold;
mod store_contract;
mod tenants;
mod workers;
