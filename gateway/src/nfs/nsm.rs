//! NSM, the Network Status Monitor (program 100024 version 1), as the lock server needs it:
//! clients tell it they rebooted (SM_NOTIFY: their locks are freed), and it tells clients that
//! the server "rebooted" (after a restart or when a public address moved), so they reclaim
//! their locks. Its monitor list is not kept by a local statd but on the shared volume (see
//! [`super::nlm::store`]), so the node that takes over an address knows whom to notify.
//!
//! SM_MON, SM_UNMON and SM_UNMON_ALL are a local lock manager's requests to its own statd;
//! nasgw's lock manager keeps its list itself, so remote callers are refused (`STAT_FAIL`), as
//! rpc.statd refuses them from anyone but localhost. Decoding is pure and fuzzed.

use crate::nfs::xdr::{XdrError, XdrReader, XdrWriter};

/// NSM's RPC program number.
pub const PROGRAM: u32 = 100_024;
/// Longest host name (`SM_MAXSTRLEN`).
pub const SM_MAXSTRLEN: usize = 1024;

/// NSM procedure numbers.
#[allow(missing_docs)]
pub mod procs {
    pub const NULL: u32 = 0;
    pub const STAT: u32 = 1;
    pub const MON: u32 = 2;
    pub const UNMON: u32 = 3;
    pub const UNMON_ALL: u32 = 4;
    pub const SIMU_CRASH: u32 = 5;
    pub const NOTIFY: u32 = 6;
}

/// `res`: whether the monitor agrees.
pub const STAT_SUCC: u32 = 0;
/// `res`: it does not.
pub const STAT_FAIL: u32 = 1;

/// Arguments of one NSM call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Args<'a> {
    /// SM_NULL.
    Null,
    /// SM_STAT (`sm_name`): is this host monitored, and what is our state number.
    Stat {
        /// Host name asked about.
        name: &'a [u8],
    },
    /// SM_MON (`mon`): monitor a host for the caller.
    Mon {
        /// Host to monitor.
        name: &'a [u8],
    },
    /// SM_UNMON (`mon_id`).
    Unmon {
        /// Host to stop monitoring.
        name: &'a [u8],
    },
    /// SM_UNMON_ALL (`my_id`).
    UnmonAll,
    /// SM_SIMU_CRASH.
    SimuCrash,
    /// SM_NOTIFY (`stat_chge`): host `name` restarted and its state is now `state`.
    Notify {
        /// The host that restarted.
        name: &'a [u8],
        /// Its new state number.
        state: i32,
    },
}

fn my_id(r: &mut XdrReader<'_>) -> Result<(), XdrError> {
    r.opaque(SM_MAXSTRLEN)?;
    r.u32()?;
    r.u32()?;
    r.u32()?;
    Ok(())
}

/// Decodes the arguments of procedure `proc_`; `Ok(None)` for a procedure NSM does not have.
pub fn decode(proc_: u32, args: &[u8]) -> Result<Option<Args<'_>>, XdrError> {
    let r = &mut XdrReader::new(args);
    let a = match proc_ {
        procs::NULL => Args::Null,
        procs::STAT => Args::Stat { name: r.opaque(SM_MAXSTRLEN)? },
        procs::MON => {
            let name = r.opaque(SM_MAXSTRLEN)?;
            my_id(r)?;
            r.fixed(16)?;
            Args::Mon { name }
        }
        procs::UNMON => {
            let name = r.opaque(SM_MAXSTRLEN)?;
            my_id(r)?;
            Args::Unmon { name }
        }
        procs::UNMON_ALL => {
            my_id(r)?;
            Args::UnmonAll
        }
        procs::SIMU_CRASH => Args::SimuCrash,
        procs::NOTIFY => Args::Notify { name: r.opaque(SM_MAXSTRLEN)?, state: r.u32()? as i32 },
        _ => return Ok(None),
    };
    Ok(Some(a))
}

/// Appends an `sm_stat_res` (SM_STAT, SM_MON).
pub fn put_stat_res(w: &mut XdrWriter, res: u32, state: u32) {
    w.u32(res).u32(state);
}

/// Appends an `sm_stat` (SM_UNMON, SM_UNMON_ALL).
pub fn put_stat(w: &mut XdrWriter, state: u32) {
    w.u32(state);
}

/// The arguments of the SM_NOTIFY the server sends: "`mon_name` restarted, its state is `state`".
pub fn notify_args(mon_name: &str, state: u32) -> Vec<u8> {
    let mut w = XdrWriter::default();
    w.opaque(mon_name.as_bytes()).u32(state);
    w.buf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_every_procedure_and_refuses_garbage() {
        let notify = notify_args("198.18.1.2", 7);
        assert_eq!(decode(procs::NOTIFY, &notify), Ok(Some(Args::Notify { name: b"198.18.1.2", state: 7 })));
        let mut mon = XdrWriter::default();
        mon.opaque(b"client").opaque(b"server").u32(100_021).u32(4).u32(16).fixed(&[9; 16]);
        assert_eq!(decode(procs::MON, &mon.buf), Ok(Some(Args::Mon { name: b"client" })));
        for cut in 0..mon.buf.len() {
            assert!(decode(procs::MON, &mon.buf[..cut]).is_err(), "cut {cut}");
        }
        let mut unmon = XdrWriter::default();
        unmon.opaque(b"client").opaque(b"me").u32(1).u32(1).u32(1);
        assert_eq!(decode(procs::UNMON, &unmon.buf), Ok(Some(Args::Unmon { name: b"client" })));
        assert_eq!(decode(procs::UNMON_ALL, &unmon.buf[12..]), Ok(Some(Args::UnmonAll)));
        assert_eq!(decode(procs::SIMU_CRASH, &[]), Ok(Some(Args::SimuCrash)));
        assert_eq!(decode(procs::NULL, &[]), Ok(Some(Args::Null)));
        assert_eq!(decode(9, &[]), Ok(None));
        let mut long = XdrWriter::default();
        long.opaque(&[b'a'; 1025]);
        assert_eq!(decode(procs::STAT, &long.buf), Err(XdrError::TooLong(1025)));
    }
}
