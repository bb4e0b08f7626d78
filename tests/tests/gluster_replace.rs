//! A dead storage node replaced by a blank one at the same address, with the appliance's own
//! provisioning code (`nasgw_appliance::provision::{adopt_uuid, reset_brick}`), on a real
//! replica 3 GlusterFS volume in namespaces.
//!
//! Node 3 dies and loses everything: its glusterd state and its brick. A blank glusterd comes up
//! at its address with a new UUID; `adopt_uuid` gives it back the UUID the pool knows it by and
//! the peer files, and its glusterd then takes the volume from the pool, before the brick's
//! directory exists. `reset_brick` then rebuilds the brick, and the full heal copies every file
//! back byte for byte. Without the glusterd restart in `reset_brick`, the commit fails for ever
//! with "When destination brick is new, please use gluster volume replace-brick" (the
//! appliance's three-VM test saw that for 25 minutes).

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::Result;
use nasgw_appliance::provision::gluster::{self, Answer};
use nasgw_appliance::provision::{adopt_uuid, reset_brick, Glusterd};
use nasgw_tests::gluster::{GlusterCluster, GlusterSpec};
use nasgw_tests::wait_for;

/// Node `i`'s namespaced glusterd, driven the way the appliance drives its own with systemd.
struct Node<'a> {
    cluster: &'a mut GlusterCluster,
    i: usize,
}

fn answer(out: Output) -> Answer {
    Answer {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

impl Glusterd for Node<'_> {
    fn cli(&self, remote: Option<&str>, args: &[&str]) -> Result<Answer> {
        match remote {
            // Another node's glusterd over TCP: only the network namespace matters.
            Some(r) => {
                let ns = &self.cluster.nodes[self.i].ns;
                let out = Command::new("ip")
                    .args(["netns", "exec", ns, "gluster", "--mode=script", &format!("--remote-host={r}")])
                    .args(args)
                    .output()?;
                Ok(answer(out))
            }
            None if !self.cluster.glusterd_running(self.i) => anyhow::bail!("glusterd is stopped"),
            None => Ok(answer(self.cluster.gluster(self.i, args))),
        }
    }
    fn stop(&mut self) -> Result<()> {
        self.cluster.stop_glusterd(self.i);
        Ok(())
    }
    fn start(&mut self) -> Result<()> {
        self.cluster.start_glusterd(self.i);
        Ok(())
    }
}

/// This node's UUID as its glusterd says.
fn uuid_of(cluster: &GlusterCluster, i: usize) -> String {
    gluster::pool_answer(&answer(cluster.gluster(i, &["pool", "list", "--xml"]))).expect("pool list").0
}

/// The test's files: a few sizes, one in a directory, contents that differ per file.
fn files() -> Vec<(String, Vec<u8>)> {
    (0..12u32)
        .map(|i| {
            let name = if i % 4 == 0 { format!("dir/f{i}") } else { format!("f{i}") };
            let len = [0usize, 1, 4096, 200_000][i as usize % 4] + i as usize;
            let data = (0..len).map(|b| (b as u32).wrapping_mul(31).wrapping_add(i * 7) as u8).collect();
            (name, data)
        })
        .collect()
}

/// Which of `files` the brick `root` does not hold byte for byte.
fn missing(root: &Path, files: &[(String, Vec<u8>)]) -> Vec<String> {
    files.iter().filter(|(n, d)| std::fs::read(root.join(n)).ok().as_ref() != Some(d)).map(|(n, _)| n.clone()).collect()
}

#[test]
fn a_blank_node_at_a_dead_nodes_address_gets_its_brick_back() {
    let mut cluster = GlusterCluster::start(GlusterSpec::default());
    let mnt = cluster.mount("n1", &cluster.dir().join("mnt"));
    std::fs::create_dir(mnt.join("dir")).unwrap();
    let files = files();
    for (n, d) in &files {
        std::fs::write(mnt.join(n), d).unwrap();
    }
    let brick3 = cluster.nodes[2].brick.clone();
    assert_eq!(missing(&brick3, &files), Vec::<String>::new(), "node 3's brick before the replacement");
    let old_uuid = uuid_of(&cluster, 2);

    // Node 3 dies; its disks are replaced: no glusterd state, no brick directory.
    cluster.power_cut(2);
    let lib = cluster.nodes[2].dir.join("lib");
    std::fs::remove_dir_all(&lib).unwrap();
    std::fs::remove_dir_all(&brick3).unwrap();
    // Node 1 writes on while node 3 is away.
    let mut files = files;
    files.push(("while-away".into(), vec![9u8; 100_000]));
    std::fs::write(mnt.join("while-away"), &files[files.len() - 1].1).unwrap();

    // A blank node at the same address: a new glusterd with a new UUID.
    cluster.power_on(2);
    cluster.wait_glusterd(2);
    let blank_uuid = uuid_of(&cluster, 2);
    assert_ne!(blank_uuid, old_uuid, "the blank node kept the old UUID");
    eprintln!("node 3 blank: UUID {blank_uuid}, the pool knows it as {old_uuid}");

    let t0 = Instant::now();
    let brick = format!("{}:{}", cluster.nodes[2].addr, brick3.display());
    let from = cluster.nodes[0].addr.clone();
    adopt_uuid(&mut Node { cluster: &mut cluster, i: 2 }, &lib, &old_uuid, &from).expect("adopt_uuid");
    cluster.wait_glusterd(2);
    assert_eq!(uuid_of(&cluster, 2), old_uuid);
    // The pool syncs the volume to it (its brick cannot start: the directory is not there).
    wait_for("the volume on node 3", Duration::from_secs(60), Duration::from_millis(250), || {
        let info = answer(cluster.gluster(2, &["volume", "info", "smb", "--xml"]));
        let info = gluster::parse_volume_info(&info.stdout, "smb");
        info.ok().flatten().filter(|v| v.bricks.iter().any(|(b, _)| *b == brick))
    });
    let t_adopted = t0.elapsed();

    reset_brick(&mut Node { cluster: &mut cluster, i: 2 }, "smb", &brick, Duration::from_secs(120))
        .expect("reset_brick");
    let t_reset = t0.elapsed();
    cluster.wait_bricks_online();
    // The full heal crawls in the background: poll the brick itself.
    wait_for("node 3's brick healed byte-exact", Duration::from_secs(120), Duration::from_millis(500), || {
        missing(&brick3, &files).is_empty().then_some(())
    });
    eprintln!(
        "node 3 replaced: UUID adopted and volume synced {:.1} s, brick reset {:.1} s, healed byte-exact {:.1} s",
        t_adopted.as_secs_f64(),
        t_reset.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
    // The volume still serves every file through the mount.
    assert_eq!(missing(&mnt, &files), Vec::<String>::new());
}
