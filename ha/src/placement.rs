//! Public address placement: a pure function from (nodes, which may serve, current owners,
//! policy) to the new owners. The leader calls it on every change and publishes the result;
//! nothing here does I/O, so it is tested with many tiny text scenarios (CTDB's takeover tests).
//!
//! Rules, in order:
//! 1. an address stays with its current owner while that owner may serve (no needless moves);
//! 2. an `ip move` pin wins while its node may serve;
//! 3. an unowned address goes to the least loaded node that may serve (ties: the address's home
//!    node, `index mod nodes`, then the lowest node number);
//! 4. with failback on, addresses are rebalanced until loads differ by at most one, moving
//!    first the addresses whose home is the receiving node (so a returning node gets its own
//!    addresses back); pinned addresses never move for balance. With failback off an address
//!    only moves when its owner cannot serve.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// Everything placement depends on.
#[derive(Debug, Clone)]
pub struct PlacementInput<'a> {
    /// How many nodes are configured (for home nodes).
    pub nodes: u32,
    /// Nodes that may hold addresses now (connected and OK).
    pub eligible: &'a BTreeSet<u32>,
    /// Every public address, in config order.
    pub addresses: &'a [IpAddr],
    /// Current owners (addresses absent are unowned).
    pub current: &'a BTreeMap<IpAddr, u32>,
    /// `ip move` requests still in force.
    pub pins: &'a BTreeMap<IpAddr, u32>,
    /// Rebalance (and so fail back) when a node returns.
    pub failback: bool,
}

/// The new owner of every address; `None` when no node may serve.
pub type Assignment = BTreeMap<IpAddr, Option<u32>>;

/// Computes the placement (see the module doc for the rules).
pub fn place(input: &PlacementInput<'_>) -> Assignment {
    let home = |i: usize| (i as u32) % input.nodes.max(1);
    let mut owner: BTreeMap<IpAddr, u32> = BTreeMap::new();
    let mut load: BTreeMap<u32, usize> = input.eligible.iter().map(|n| (*n, 0)).collect();
    for a in input.addresses {
        if let Some(o) = input.current.get(a).filter(|o| input.eligible.contains(o)) {
            owner.insert(*a, *o);
        }
        if let Some(p) = input.pins.get(a).filter(|p| input.eligible.contains(p)) {
            owner.insert(*a, *p);
        }
        if let Some(o) = owner.get(a) {
            *load.get_mut(o).expect("eligible") += 1;
        }
    }
    for (i, a) in input.addresses.iter().enumerate() {
        if owner.contains_key(a) || load.is_empty() {
            continue;
        }
        let min = *load.values().min().expect("non-empty");
        let pick = if load.get(&home(i)) == Some(&min) {
            home(i)
        } else {
            *load.iter().find(|(_, l)| **l == min).expect("a least loaded node").0
        };
        owner.insert(*a, pick);
        *load.get_mut(&pick).expect("eligible") += 1;
    }
    if input.failback {
        while let (Some((&max_node, &max)), Some((&min_node, &min))) = (
            load.iter().max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0))),
            load.iter().min_by(|a, b| a.1.cmp(b.1).then(a.0.cmp(b.0))),
        ) {
            if max <= min + 1 {
                break;
            }
            let movable: Vec<(usize, IpAddr)> = input
                .addresses
                .iter()
                .enumerate()
                .filter(|(_, a)| owner.get(a) == Some(&max_node) && !input.pins.contains_key(a))
                .map(|(i, a)| (i, *a))
                .collect();
            let Some((_, a)) = movable.iter().find(|(i, _)| home(*i) == min_node).or(movable.last()).copied() else {
                break;
            };
            owner.insert(a, min_node);
            *load.get_mut(&max_node).expect("eligible") -= 1;
            *load.get_mut(&min_node).expect("eligible") += 1;
        }
    }
    input.addresses.iter().map(|a| (*a, owner.get(a).copied())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One scenario line: `NODES ok:LIST fb:on|off cur:a0,b1,c- [pin:b2] -> a0,b1,c2`.
    /// Addresses are letters (a = 10.0.0.1, b = 10.0.0.2, ...), owners node numbers, `-` none.
    fn run(line: &str) {
        let (input, expected) = line.split_once("->").expect("->");
        let mut nodes = 0;
        let mut eligible = BTreeSet::new();
        let mut failback = true;
        let mut current = BTreeMap::new();
        let mut pins = BTreeMap::new();
        let mut addresses = Vec::new();
        let ip = |c: char| -> IpAddr { format!("10.0.0.{}", c as u8 - b'a' + 1).parse().unwrap() };
        let pairs = |s: &str| -> Vec<(char, Option<u32>)> {
            s.split(',')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let mut ch = p.chars();
                    let c = ch.next().unwrap();
                    let rest: String = ch.collect();
                    (c, if rest == "-" { None } else { Some(rest.parse().unwrap()) })
                })
                .collect()
        };
        for word in input.split_whitespace() {
            if let Some(v) = word.strip_prefix("ok:") {
                eligible = v.split(',').filter(|s| !s.is_empty()).map(|s| s.parse().unwrap()).collect();
            } else if let Some(v) = word.strip_prefix("fb:") {
                failback = v == "on";
            } else if let Some(v) = word.strip_prefix("cur:") {
                for (c, o) in pairs(v) {
                    addresses.push(ip(c));
                    if let Some(o) = o {
                        current.insert(ip(c), o);
                    }
                }
            } else if let Some(v) = word.strip_prefix("pin:") {
                for (c, o) in pairs(v) {
                    pins.insert(ip(c), o.unwrap());
                }
            } else {
                nodes = word.parse().unwrap();
            }
        }
        let got = place(&PlacementInput {
            nodes,
            eligible: &eligible,
            addresses: &addresses,
            current: &current,
            pins: &pins,
            failback,
        });
        let want: Assignment = pairs(expected.trim()).into_iter().map(|(c, o)| (ip(c), o)).collect();
        assert_eq!(got, want, "scenario: {line}");
    }

    #[test]
    fn scenarios() {
        let table = "
            # fresh cluster: every address to its home node
            3 ok:0,1,2 cur:a-,b-,c- -> a0,b1,c2
            3 ok:0,1,2 cur:a-,b-,c-,d-,e-,f- -> a0,b1,c2,d0,e1,f2
            # one node up: it takes everything
            3 ok:1 cur:a-,b-,c- -> a1,b1,c1
            # nobody may serve: nothing is owned
            3 ok: cur:a0,b1,c2 -> a-,b-,c-
            # a node dies: its address goes to the least loaded survivor, others stay
            3 ok:0,2 cur:a0,b1,c2 -> a0,b0,c2
            3 ok:0,1 cur:a0,b1,c2,d0,e1,f2 -> a0,b1,c0,d0,e1,f1
            # two die
            3 ok:2 cur:a0,b1,c2 -> a2,b2,c2
            # it returns, failback on: it gets its own address back
            3 ok:0,1,2 fb:on cur:a0,b0,c2 -> a0,b1,c2
            3 ok:0,1,2 fb:on cur:a2,b2,c2 -> a0,b1,c2
            3 ok:0,1,2 fb:on cur:a0,b1,c0,d0,e1,f1 -> a0,b1,c2,d0,e1,f2
            # it returns, failback off: nothing moves
            3 ok:0,1,2 fb:off cur:a0,b0,c2 -> a0,b0,c2
            3 ok:0,1,2 fb:off cur:a2,b2,c2 -> a2,b2,c2
            # failback off still places unowned addresses on the least loaded node
            3 ok:0,1,2 fb:off cur:a1,b1,c- -> a1,b1,c2
            3 ok:0,1 fb:off cur:a1,b1,c- -> a1,b1,c0
            # balanced but not at home: failback only moves for balance
            2 ok:0,1 fb:on cur:a1,b0 -> a1,b0
            # more nodes than addresses
            4 ok:0,1,2,3 cur:a-,b- -> a0,b1
            4 ok:2,3 cur:a0,b1 -> a2,b3
            # ip move: a pin wins and is never rebalanced away
            3 ok:0,1,2 fb:on cur:a0,b1,c2 pin:a1 -> a1,b0,c2
            3 ok:0,1,2 fb:on cur:a0,b1,c2 pin:a2,b2 -> a2,b2,c0
            3 ok:0,1,2 fb:off cur:a0,b1,c2 pin:a1 -> a1,b1,c2
            # a pin to a node that cannot serve is ignored
            3 ok:0,1 fb:on cur:a0,b1,c2 pin:a2 -> a0,b1,c0
            # single node cluster
            1 ok:0 cur:a-,b- -> a0,b0
            1 ok: cur:a0 -> a-
        ";
        for line in table.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
            run(line);
        }
    }

    /// A small deterministic generator, so the invariants are checked over many inputs.
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self, n: u64) -> u64 {
            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (self.0 >> 33) % n.max(1)
        }
    }

    #[test]
    fn invariants_hold_over_random_inputs() {
        let mut rng = Lcg(42);
        for _ in 0..5000 {
            let nodes = 1 + rng.next(6) as u32;
            let addresses: Vec<IpAddr> =
                (0..rng.next(10)).map(|i| format!("10.1.0.{}", i + 1).parse().unwrap()).collect();
            let eligible: BTreeSet<u32> = (0..nodes).filter(|_| rng.next(3) != 0).collect();
            let mut current = BTreeMap::new();
            for a in &addresses {
                if rng.next(4) != 0 {
                    current.insert(*a, rng.next(u64::from(nodes)) as u32);
                }
            }
            let failback = rng.next(2) == 0;
            let pins = BTreeMap::new();
            let input = PlacementInput {
                nodes,
                eligible: &eligible,
                addresses: &addresses,
                current: &current,
                pins: &pins,
                failback,
            };
            let out = place(&input);
            assert_eq!(out.len(), addresses.len());
            for (a, o) in &out {
                match o {
                    Some(o) => assert!(eligible.contains(o), "{a} on ineligible {o}"),
                    None => assert!(eligible.is_empty(), "{a} unowned with {eligible:?}"),
                }
                if let Some(c) = current.get(a).filter(|c| eligible.contains(c)) {
                    if !failback {
                        assert_eq!(o, &Some(*c), "moved without need");
                    }
                }
            }
            if failback && !eligible.is_empty() {
                let mut load: BTreeMap<u32, usize> = eligible.iter().map(|n| (*n, 0)).collect();
                for o in out.values().flatten() {
                    *load.get_mut(o).unwrap() += 1;
                }
                let (max, min) = (load.values().max().unwrap(), load.values().min().unwrap());
                assert!(max - min <= 1, "unbalanced {load:?}");
            }
            // Deterministic and stable: placing the result again changes nothing.
            let again: BTreeMap<IpAddr, u32> = out.iter().filter_map(|(a, o)| o.map(|o| (*a, o))).collect();
            let input2 = PlacementInput { current: &again, ..input };
            assert_eq!(place(&input2), out);
        }
    }
}
