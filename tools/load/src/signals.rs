//! End-user signals for `--client-signals`: the `client_ip` and `client_id` a producer
//! would pass on behalf of the person asking for a code, so a run exercises the abuse
//! rules that read them.
//!
//! Every request of a run gets an address of its own from 198.18.0.0/15 (the block set
//! aside for benchmarks, RFC 2544), walked from a random start, and a client id naming
//! the run and the request. Consecutive requests share a /24, as real traffic behind one
//! network would, so the network rule has something to count.

use std::net::Ipv4Addr;

/// 198.18.0.0: the first address of the benchmarking block.
const BLOCK_START: u32 = u32::from_be_bytes([198, 18, 0, 0]);
/// Addresses in 198.18.0.0/15.
const BLOCK_SIZE: u32 = 1 << 17;

/// The signals of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signals {
    pub client_ip: String,
    pub client_id: String,
}

/// Where a run's signals start; the `n`th request gets the `n`th address after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignalSequence {
    first_address: u32,
    run: u32,
}

impl SignalSequence {
    /// A sequence starting at a random address, with a random run tag in its client ids.
    pub fn random() -> SignalSequence {
        SignalSequence {
            first_address: rand::random_range(0..BLOCK_SIZE),
            run: rand::random(),
        }
    }

    /// The signals of the run's `index`th request.
    pub fn nth(&self, index: u64) -> Signals {
        // The remainder is below BLOCK_SIZE, so it fits in a u32.
        let offset = ((u64::from(self.first_address) + index) % u64::from(BLOCK_SIZE)) as u32;
        Signals {
            client_ip: Ipv4Addr::from(BLOCK_START + offset).to_string(),
            client_id: format!("load-{:08x}-{index}", self.run),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{BLOCK_SIZE, SignalSequence};

    #[test]
    fn addresses_stay_in_the_benchmarking_block_and_wrap_at_its_end() {
        let sequence = SignalSequence {
            first_address: BLOCK_SIZE - 1,
            run: 0xabc,
        };
        assert_eq!(sequence.nth(0).client_ip, "198.19.255.255");
        assert_eq!(sequence.nth(1).client_ip, "198.18.0.0");
        assert_eq!(sequence.nth(2).client_id, "load-00000abc-2");
    }

    #[test]
    fn requests_of_one_run_have_distinct_addresses_and_ids() {
        let sequence = SignalSequence::random();
        let first = sequence.nth(10);
        let second = sequence.nth(11);
        assert_ne!(first.client_ip, second.client_ip);
        assert_ne!(first.client_id, second.client_id);
    }
}
