//! Footprint benchmark (DESIGN §8): an idle daemon with 10 instances; how
//! long until it tells systemd it is ready (`READY=1` on $NOTIFY_SOCKET,
//! exactly as under `Type=notify`), and how much memory and CPU it uses
//! while idle.
//!
//!   cargo bench --bench footprint

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let bin = std::env::var("HOURGLASS_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_hourglass").to_owned());
    let dir = tempfile::tempdir()?;
    let mut config = format!(
        "[store]\nurl = \"sqlite://{}/hourglass.db\"\n\n[log]\nlevel = \"warn\"\n",
        dir.path().display()
    );
    for i in 0..10 {
        config.push_str(&format!(
            "\n[[instances]]\nname = \"shop-{i}\"\ntype = \"simulated\"\nschedule = \"*/2 * * * *\"\n\
             [instances.simulated]\nchannel = \"amazon\"\nper_poll = 5\nthreads = 5\n"
        ));
    }
    let config_path = dir.path().join("hourglass.toml");
    std::fs::write(&config_path, config)?;

    // The reference in this run: starting a process that does nothing.
    let mut floor = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        Command::new("true").status()?;
        floor.push(t.elapsed().as_secs_f64() * 1000.0);
    }

    let mut ready = Vec::new();
    let mut last_pid = None;
    for run in 0..5 {
        let start = Instant::now();
        let (mut child, notify) =
            common::spawn_ready(&bin, &config_path, Stdio::inherit(), dir.path())?;
        ready.push(start.elapsed().as_secs_f64() * 1000.0);
        if run == 4 {
            last_pid = Some((child, notify));
        } else {
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let _ = child.wait();
        }
    }
    let (mut child, _notify) = last_pid.ok_or_else(|| anyhow::anyhow!("no run"))?;
    let pid = child.id();
    // Settle: the first polls of all 10 instances run at start.
    let polled_all = || -> anyhow::Result<bool> {
        let out = Command::new(&bin)
            .arg("--config")
            .arg(&config_path)
            .args(["connectors", "list", "--json"])
            .output()?;
        let list: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        Ok(list
            .as_array()
            .is_some_and(|l| l.len() == 10 && l.iter().all(|i| i["last_poll_at"].is_string())))
    };
    let settle_by = Instant::now() + Duration::from_secs(60);
    while !polled_all()? {
        anyhow::ensure!(Instant::now() < settle_by, "the first polls never finished");
        std::thread::sleep(Duration::from_millis(100));
    }
    let idle_cpu = common::cpu_percent_over(pid, 10);
    let rss = common::proc_kb(pid, "VmRSS:") as f64 / 1024.0;
    let peak = common::proc_kb(pid, "VmHWM:") as f64 / 1024.0;
    let _ = Command::new("kill").arg(pid.to_string()).status();
    let _ = child.wait();

    let ready_ms = median(ready.clone());
    let floor_ms = median(floor);
    println!("instances               10 (simulated), SQLite store");
    println!(
        "ready (READY=1)         median {ready_ms:.1} ms over {} starts (first, with migrations: {:.1} ms); target < 300 ms, ratio {:.2}",
        ready.len(),
        ready[0],
        ready_ms / 300.0
    );
    println!("  reference: spawning `true` takes {floor_ms:.2} ms here");
    println!(
        "resident memory idle    {rss:.1} MB (peak {peak:.1} MB); target < 30 MB, ratio {:.2}",
        rss / 30.0
    );
    println!("idle CPU                {idle_cpu:.2} % of one core over 10 s");
    Ok(())
}
