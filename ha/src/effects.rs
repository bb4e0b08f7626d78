//! The one boundary between HA decisions and the world: [`Effects`]. The daemon implements it
//! with netlink, raw sockets, an fcntl lock and a child process ([`crate::system`]); the
//! simulated cluster (`sim`, tests) implements it with an in-memory network.

use std::net::IpAddr;

use crate::connections::TcpConnection;
use crate::machine::{Action, LockOp};
use crate::wire::message::Message;

/// Side effects the state machine asks for. Each call returns quickly: slow work (the lock on
/// a possibly hung volume) is queued, and its outcome comes back later as an event.
pub trait Effects {
    /// Sends `msg` to every other node.
    fn send(&mut self, msg: &Message);
    /// Adds `address` to its interface, sends gratuitous ARP, then tickles `tickle`.
    fn take_address(&mut self, address: IpAddr, tickle: &[TcpConnection]);
    /// Removes `address` from its interface and resets `reset` (this node's connections on it).
    fn release_address(&mut self, address: IpAddr, reset: &[TcpConnection]);
    /// Starts a recovery lock operation; the outcome is fed back as `Event::Lock`.
    fn lock(&mut self, op: LockOp);
    /// Runs the notify script with `event` and `details` (failure is logged, never fatal).
    fn notify(&mut self, event: &str, details: &[String]);
}

/// Carries out `actions` in order (order matters: a heartbeat saying an address was released
/// is sent after the release).
pub fn apply(effects: &mut impl Effects, actions: &[Action]) {
    for a in actions {
        match a {
            Action::Send(m) => effects.send(m),
            Action::Take { address, tickle } => effects.take_address(*address, tickle),
            Action::Release { address, reset } => effects.release_address(*address, reset),
            Action::Lock(op) => effects.lock(*op),
            Action::Notify { event, details } => effects.notify(event, details),
        }
    }
}
