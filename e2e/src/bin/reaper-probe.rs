//! Probe for the harness's reaper (used by `tests/it/reaper.rs`): starts one long `sleep`
//! child the way the stack starts its services, prints the child's pid, and waits to be
//! ended by a signal.

fn main() -> anyhow::Result<()> {
    let child = std::process::Command::new("sleep").arg("600").spawn()?;
    let child = tessera_e2e::reaper::Reaped::new(child);
    println!("{}", child.0.id());
    std::thread::sleep(std::time::Duration::from_secs(600));
    Ok(())
}
