//! Probe for the harness's reaper (used by `tests/it/reaper.rs`): starts one long `sleep`
//! child the way the stack starts its services (registered) and one the way a library
//! might (not registered), prints both pids, and waits to be ended by a signal.

fn main() -> anyhow::Result<()> {
    let child = std::process::Command::new("sleep").arg("600").spawn()?;
    let child = tessera_e2e::reaper::Reaped::new(child);
    let other = std::process::Command::new("sleep").arg("601").spawn()?;
    println!("{} {}", child.0.id(), other.id());
    std::thread::sleep(std::time::Duration::from_secs(600));
    Ok(())
}
