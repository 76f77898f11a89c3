//! API STUB — replaced by the demo implementation.
use crate::cli::DemoArgs;
use crate::config::Settings;

/// Runs the demo.
pub async fn run(_args: DemoArgs, _settings: Settings) -> Result<(), String> {
    Err("not yet".into())
}
