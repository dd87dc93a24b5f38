//! Giving back the table memory of maps that emptied.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};

/// Shrinks `map` to twice its length once it is less than a quarter full.
///
/// A `HashMap` keeps its capacity when entries go: a daemon that served
/// 10,000 flows kept every per-flow table at 10,000 slots (megabytes)
/// after they were gone. Halving room is left, so a map that shrinks and
/// grows again does not reallocate on every change.
pub fn shrink_when_sparse<K: Eq + Hash, V, S: BuildHasher>(map: &mut HashMap<K, V, S>) {
    const SMALL: usize = 64;
    if map.capacity() > SMALL && map.len() < map.capacity() / 4 {
        map.shrink_to((map.len() * 2).max(SMALL));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_map_that_emptied_gives_its_table_back_and_a_full_one_keeps_it() {
        let mut map: HashMap<u32, [u8; 64]> = (0..10_000).map(|i| (i, [0; 64])).collect();
        let full = map.capacity();
        shrink_when_sparse(&mut map);
        assert_eq!(map.capacity(), full, "a full map keeps its table");
        map.retain(|k, _| *k < 100);
        shrink_when_sparse(&mut map);
        assert!(map.capacity() < full / 10, "capacity {}", map.capacity());
        assert_eq!(map.len(), 100);
        map.clear();
        shrink_when_sparse(&mut map);
        assert!(map.capacity() <= 128, "capacity {}", map.capacity());
    }
}
