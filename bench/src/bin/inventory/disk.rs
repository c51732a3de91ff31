//! `--disk journaled`: the benchmark's files (the store's and PostgreSQL's) on an ext4
//! filesystem with a journal in `data=ordered` mode (the distributions' default), in an
//! image loop-mounted for the run. The default disk of the benchmark machine is ext4
//! without a journal, where an `fdatasync` of appended data writes the data and the
//! inode's size and nothing else; with a journal, every size change also commits a
//! journal transaction. The loop device does direct I/O to its image, so pages are not
//! cached twice, and its flushes become `fsync`s of the image on the disk below.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

/// A loop-mounted ext4 image; unmounted, detached and deleted on drop.
pub(crate) struct JournaledDisk {
    image: PathBuf,
    pub(crate) mount: PathBuf,
    device: String,
    mounted: bool,
}

fn run(what: &str, cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("run {what}"))?;
    if !out.status.success() {
        bail!("{what} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

impl JournaledDisk {
    /// Creates a sparse image of `size_gib` under `under`, makes an ext4 filesystem with a
    /// journal in it (inode tables and journal initialised now, so no background
    /// initialisation writes during the run), and mounts it with `data=ordered`.
    pub(crate) fn mount(under: &Path, size_gib: u64) -> anyhow::Result<Self> {
        if !super::is_root() {
            bail!("--disk journaled needs root: it loop-mounts an ext4 image");
        }
        let image = under.join("journaled-ext4.img");
        let mount = under.join("journaled-mnt");
        std::fs::create_dir_all(&mount)?;
        let f = std::fs::File::create(&image)?;
        f.set_len(size_gib << 30)?;
        drop(f);
        run(
            "mkfs.ext4",
            Command::new("mkfs.ext4")
                .args([
                    "-q",
                    "-F",
                    "-O",
                    "has_journal",
                    "-E",
                    "lazy_itable_init=0,lazy_journal_init=0",
                ])
                .arg(&image),
        )?;
        let device = run(
            "losetup",
            Command::new("losetup").args(["--find", "--show", "--direct-io=on"]).arg(&image),
        )?;
        let mut disk = JournaledDisk { image, mount, device, mounted: false };
        run(
            "mount",
            Command::new("mount")
                .args(["-t", "ext4", "-o", "data=ordered", &disk.device])
                .arg(&disk.mount),
        )?;
        disk.mounted = true;
        let options = disk.options()?;
        if !options.split(',').any(|o| o == "data=ordered") {
            bail!("{} is mounted without data=ordered: {options}", disk.mount.display());
        }
        Ok(disk)
    }

    /// The mount options the kernel reports for the filesystem.
    fn options(&self) -> anyhow::Result<String> {
        let mounts = std::fs::read_to_string("/proc/mounts")?;
        let target = self.mount.canonicalize()?;
        mounts
            .lines()
            .find_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() > 3 && Path::new(f[1]) == target).then(|| f[3].to_owned())
            })
            .context("the journaled filesystem is not in /proc/mounts")
    }

    pub(crate) fn describe(&self) -> String {
        format!(
            "ext4 with a journal, data=ordered, on {} (direct I/O to an image on the default disk)",
            self.device
        )
    }
}

impl Drop for JournaledDisk {
    fn drop(&mut self) {
        if self.mounted {
            // The store's last writer threads may still be closing their files: try for a
            // few seconds, then detach lazily (the kernel finishes once they are closed), so
            // a later run never mounts over a busy filesystem.
            let quiet = |c: &mut Command| c.stderr(std::process::Stdio::null()).status();
            let unmounted = (0..25).any(|_| {
                let ok = quiet(Command::new("umount").arg(&self.mount)).is_ok_and(|s| s.success());
                if !ok {
                    std::thread::sleep(std::time::Duration::from_millis(200));
                }
                ok
            });
            if !unmounted {
                eprintln!("    {} still busy after 5 s: detached lazily", self.mount.display());
                let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
            }
        }
        let _ = Command::new("losetup").args(["-d", &self.device]).status();
        let _ = std::fs::remove_file(&self.image);
        let _ = std::fs::remove_dir(&self.mount);
    }
}
