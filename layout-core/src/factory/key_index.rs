//! The factory's key index: a small open-addressing table that maps each registered key to
//! its row, built so that a lookup of a registered key is one hash, one index and one key
//! comparison.
//!
//! The keys are known when the table is built (registration happens at start-up), so the
//! table chooses its hash seed: among a few fixed seeds and two table sizes it takes the
//! first that puts every key in its home cell, else the one with the shortest longest
//! displacement. A lookup hashes the key once (a multiply by the seed, whose top bits are
//! the home cell) and compares the key there; only a key displaced by a collision the seeds
//! could not avoid is looked for further, on a cold path, and never more than
//! [`KeyIndex::max_probe`] cells away.
//!
//! The hash ([`KeyHasher`]) is made for what keys hash: a short string (a request name) is
//! mixed from its length and two 8-byte loads, an integer or a field-less enum is one word.
//! It is not a general-purpose hash and needs not be: the table holds only the keys the
//! program registered, and a lookup of any other key (whatever an attacker sends) costs at
//! most `max_probe + 1` comparisons. Correctness never rests on the hash: every hit is
//! confirmed by comparing the key (a string of up to 16 bytes by its length and the two
//! words, which are all of it; any other key with its `Eq`).

use std::any::Any;
use std::borrow::{Borrow, Cow};
use std::hash::{Hash, Hasher};
use std::rc::Rc;
use std::sync::Arc;

/// The seeds tried per table size before a larger table is tried.
const SEEDS_PER_SIZE: u64 = 16;

/// The table sizes tried, as multiples of the key count rounded up to a power of two.
const SPREADS: [usize; 2] = [2, 4];

/// A map from the registered keys to their rows (`usize`).
pub(super) struct KeyIndex<K> {
    /// A power-of-two number of cells, at least 2; `None` is an empty cell.
    cells: Vec<Option<(K, usize)>>,
    /// For a string key type, the [`TextCell`] of each cell; else empty (and then text keys
    /// are looked up like any other).
    texts: Vec<TextCell>,
    /// `cells.len() - 1`.
    mask: usize,
    /// `64 - log2(cells.len())`: a hash's top bits are its home cell.
    shift: u32,
    /// The multiplier of [`place`] for this table (odd).
    seed: u64,
    /// The longest distance between a key's home cell and its cell.
    max_probe: usize,
    /// The number of keys.
    len: usize,
    /// Whether text keys are looked up by their text: `K` is a string type, and the hash of
    /// every key computed from its text agrees with the one computed through its `Hash`
    /// (so the table can be searched both ways). Else `texts` is empty.
    by_text: bool,
}

/// A text key as [`KeyIndex::get`] compares it: its length and two words of its bytes (see
/// [`words`]), which for up to 16 bytes are the whole text, and its row.
#[derive(Clone, Copy, PartialEq, Eq)]
struct TextCell {
    /// `u64::MAX` in an empty cell: no text is that long.
    len: u64,
    first: u64,
    last: u64,
    row: usize,
}

impl TextCell {
    const EMPTY: Self = Self {
        len: u64::MAX,
        first: 0,
        last: 0,
        row: 0,
    };

    /// The cell of `text`, with `row`.
    fn of(text: &str, row: usize) -> Self {
        let (len, first, last, _) = print_and_mix(text.as_bytes());
        Self {
            len,
            first,
            last,
            row,
        }
    }

    /// Whether this cell holds a text of length `len` whose words are `first` and `last`;
    /// compared word by word in registers (a comparison of arrays may go through memory).
    #[inline]
    fn holds(&self, len: u64, first: u64, last: u64) -> bool {
        ((self.len ^ len) | (self.first ^ first) | (self.last ^ last)) == 0
    }
}

impl<K: Hash + Eq + 'static> KeyIndex<K> {
    /// An empty index.
    pub(super) fn new() -> Self {
        let text = text_of::<K>(None).is_some();
        Self {
            cells: vec![None, None],
            texts: if text {
                vec![TextCell::EMPTY; 2]
            } else {
                Vec::new()
            },
            mask: 1,
            shift: 63,
            seed: seed(0),
            max_probe: 0,
            len: 0,
            by_text: text,
        }
    }

    /// The row of `key`, if it is registered.
    pub(super) fn get(&self, key: &K) -> Option<usize> {
        self.get_at_home(key).or_else(|| self.probe(key))
    }

    /// The row of `key` if it is registered and in its home cell (as every key is unless
    /// the seeds could not avoid a collision; [`probe`](Self::probe) finds the others).
    ///
    /// A text key (`&str`, `String`, ...) is hashed from its text and compared by its
    /// length and two words (the whole text when it is 16 bytes or shorter). Any other key
    /// is hashed through `Hash` and compared with `Eq`.
    #[inline]
    pub(super) fn get_at_home(&self, key: &K) -> Option<usize> {
        if let Some(text) = text_of(Some(key)) {
            // Resolved at compile time: `K` is a string type.
            let bytes = text.as_bytes();
            let (len, first, last, mixed) = print_and_mix(bytes);
            let home = place(self.seed, text_state(mixed), self.shift);
            // `texts` is empty unless `by_text`: then the key is looked up by `probe`.
            let cell = self.texts.get(home)?;
            return (cell.holds(len, first, last)
                && (bytes.len() <= 16 || self.holds_at(home, key)))
            .then_some(cell.row);
        }
        let home = home(self.seed, key, self.shift);
        match self.cells.get(home) {
            Some(Some((candidate, row))) if candidate == key => Some(*row),
            _ => None,
        }
    }

    /// Whether cell `cell` holds `key`.
    fn holds_at(&self, cell: usize, key: &K) -> bool {
        matches!(self.cells.get(cell), Some(Some((candidate, _))) if candidate == key)
    }

    /// The row of `key` (or of a borrowed form of it), through `Hash` and `Eq`.
    pub(super) fn find<Q>(&self, key: &Q) -> Option<usize>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let home = home(self.seed, key, self.shift);
        (0..=self.max_probe).find_map(|distance| {
            match self.cells.get((home + distance) & self.mask) {
                Some(Some((candidate, row))) if candidate.borrow() == key => Some(*row),
                _ => None,
            }
        })
    }

    /// The row of `key` wherever it is: [`find`](Self::find), for a key not found in its
    /// home cell.
    #[cold]
    pub(super) fn probe(&self, key: &K) -> Option<usize> {
        self.find(key)
    }

    /// Adds `key` (not yet in the index) with its `row`.
    ///
    /// The key takes a free cell of the current table if that does not lengthen the
    /// longest probe; otherwise the table is rebuilt around every key with the best seed
    /// found.
    pub(super) fn insert(&mut self, key: K, row: usize) {
        if let Some(text) = text_of(Some(&key)) {
            // The text hash must find what `Hash` placed; if `str`'s `Hash` ever writes
            // something else, text keys are looked up through `Hash` like any other.
            let (.., mixed) = print_and_mix(text.as_bytes());
            let mut hasher = KeyHasher::default();
            key.hash(&mut hasher);
            if text_state(mixed) != hasher.state {
                self.by_text = false;
                self.texts = Vec::new();
            }
        }
        if (self.len + 1) * SPREADS[0] <= self.cells.len() {
            let home = home(self.seed, &key, self.shift);
            let free = (0..=self.max_probe)
                .map(|distance| (home + distance) & self.mask)
                .find(|&cell| matches!(self.cells.get(cell), Some(None)));
            if let Some(cell) = free {
                self.fill(cell, key, row);
                self.len += 1;
                return;
            }
        }
        let mut entries: Vec<(K, usize)> = std::mem::take(&mut self.cells)
            .into_iter()
            .flatten()
            .collect();
        entries.push((key, row));
        *self = Self::build(entries, self.by_text);
    }

    /// Puts `key` and `row` in cell `cell`.
    fn fill(&mut self, cell: usize, key: K, row: usize) {
        if let (Some(text), Some(text_cell)) = (text_of(Some(&key)), self.texts.get_mut(cell)) {
            *text_cell = TextCell::of(text, row);
        }
        if let Some(slot) = self.cells.get_mut(cell) {
            *slot = Some((key, row));
        }
    }

    /// A table for `entries`: of the sizes and seeds tried, the one with the shortest
    /// longest probe (the first that puts every key in its home cell).
    fn build(entries: Vec<(K, usize)>, by_text: bool) -> Self {
        let mut best: Option<(usize, usize, u64)> = None; // (max_probe, size, seed)
        'sizes: for spread in SPREADS {
            let size = (entries.len() * spread).next_power_of_two().max(2);
            for attempt in 0..SEEDS_PER_SIZE {
                let seed = seed(attempt);
                let probe = longest_probe(&entries, size, seed);
                if best.is_none_or(|(best_probe, ..)| probe < best_probe) {
                    best = Some((probe, size, seed));
                }
                if probe == 0 {
                    break 'sizes;
                }
            }
        }
        let (_, size, seed) = best.unwrap_or((0, 2, seed(0)));
        let mut index = Self::new();
        index.cells = std::iter::repeat_with(|| None).take(size).collect();
        index.by_text = by_text;
        index.texts = if by_text {
            vec![TextCell::EMPTY; size]
        } else {
            Vec::new()
        };
        index.mask = size - 1;
        index.shift = shift_of(size);
        index.seed = seed;
        for (key, row) in entries {
            let home = home(seed, &key, index.shift);
            let mut distance = 0;
            while matches!(
                index.cells.get((home + distance) & index.mask),
                Some(Some(_))
            ) {
                distance += 1;
            }
            index.fill((home + distance) & index.mask, key, row);
            index.max_probe = index.max_probe.max(distance);
            index.len += 1;
        }
        index
    }
}

/// What [`KeyHasher`] holds after a `str` is hashed, from the mix of its bytes (see
/// [`print_and_mix`]): `str`'s `Hash` writes the bytes, then `0xff` (checked by
/// [`KeyIndex::insert`]).
#[inline]
fn text_state(mixed: u64) -> u64 {
    // = KeyHasher::default().then(fold(bytes)).then(0xff).state
    mixed ^ 0xff
}

/// The text of `key` when `K` is a string type whose `Hash` and `Eq` are those of its
/// text; with `None`, `Some("")` for such a type. Resolved at compile time.
#[inline]
fn text_of<K: 'static>(key: Option<&K>) -> Option<&str> {
    let Some(key) = key else {
        let id = std::any::TypeId::of::<K>();
        let text = [
            std::any::TypeId::of::<&'static str>(),
            std::any::TypeId::of::<String>(),
            std::any::TypeId::of::<Box<str>>(),
            std::any::TypeId::of::<Arc<str>>(),
            std::any::TypeId::of::<Rc<str>>(),
            std::any::TypeId::of::<Cow<'static, str>>(),
        ]
        .contains(&id);
        return text.then_some("");
    };
    let key: &dyn Any = key;
    if let Some(text) = key.downcast_ref::<&'static str>() {
        Some(text)
    } else if let Some(text) = key.downcast_ref::<String>() {
        Some(text)
    } else if let Some(text) = key.downcast_ref::<Box<str>>() {
        Some(text)
    } else if let Some(text) = key.downcast_ref::<Arc<str>>() {
        Some(text)
    } else if let Some(text) = key.downcast_ref::<Rc<str>>() {
        Some(text)
    } else if let Some(text) = key.downcast_ref::<Cow<'static, str>>() {
        Some(text)
    } else {
        None
    }
}

/// The longest probe of linear probing `entries`, in order, into `size` cells with `seed`.
fn longest_probe<K: Hash>(entries: &[(K, usize)], size: usize, seed: u64) -> usize {
    let (mask, shift) = (size - 1, shift_of(size));
    let mut taken = vec![false; size];
    let mut longest = 0;
    for (key, _) in entries {
        let home = home(seed, key, shift);
        let mut distance = 0;
        while taken
            .get((home + distance) & mask)
            .copied()
            .unwrap_or(false)
        {
            distance += 1;
        }
        if let Some(cell) = taken.get_mut((home + distance) & mask) {
            *cell = true;
        }
        longest = longest.max(distance);
    }
    longest
}

/// The `attempt`-th seed, odd: a fixed sequence (splitmix64), so a factory is laid out the
/// same way on every run.
fn seed(attempt: u64) -> u64 {
    let mut z = attempt.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z ^ (z >> 31)) | 1
}

/// The shift of a table of `size` cells (a power of two, at least 2).
fn shift_of(size: usize) -> u32 {
    64 - size.trailing_zeros()
}

/// The home cell of `key` in the table whose shift is `shift`, hashed with `seed`.
#[inline]
fn home<Q: Hash + ?Sized>(seed: u64, key: &Q, shift: u32) -> usize {
    let mut hasher = KeyHasher::default();
    key.hash(&mut hasher);
    place(seed, hasher.state, shift)
}

/// The home cell of a key whose [`KeyHasher`] state is `state`: the top bits of its
/// product with the (odd) seed, a multiply-shift hash.
#[inline]
fn place(seed: u64, state: u64, shift: u32) -> usize {
    let hash = state.wrapping_mul(seed).wrapping_shr(shift);
    // Lossless: fewer bits than the table's size has.
    #[allow(clippy::cast_possible_truncation)]
    let hash = hash as usize;
    hash
}

/// The 128-bit product of `a` and `b`, its halves xor-ed: every input bit reaches the low
/// bits of the result.
#[inline]
fn folded_multiply(a: u64, b: u64) -> u64 {
    let product = u128::from(a) * u128::from(b);
    // Truncation intended: the two halves.
    #[allow(clippy::cast_possible_truncation)]
    let (low, high) = (product as u64, (product >> 64) as u64);
    low ^ high
}

/// The rotation of [`KeyHasher::word`].
const ROTATION: u32 = 26;

/// The hasher of the key index: what `Hash` writes, folded into one word. The seed is
/// applied by [`place`].
#[doc(hidden)]
#[derive(Debug, Default)]
pub struct KeyHasher {
    state: u64,
}

impl KeyHasher {
    /// Folds in one word.
    #[inline]
    fn word(&mut self, word: u64) {
        self.state = self.state.rotate_left(ROTATION) ^ word;
    }
}

impl Hasher for KeyHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        self.word(fold(bytes));
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.word(u64::from(i));
    }

    #[inline]
    fn write_u16(&mut self, i: u16) {
        self.word(u64::from(i));
    }

    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.word(u64::from(i));
    }

    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.word(i);
    }

    #[inline]
    fn write_u128(&mut self, i: u128) {
        // Truncation intended: the two halves.
        #[allow(clippy::cast_possible_truncation)]
        let (low, high) = (i as u64, (i >> 64) as u64);
        self.word(low);
        self.word(high);
    }

    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.word(u64::try_from(i).unwrap_or(u64::MAX));
    }

    #[inline]
    fn write_i8(&mut self, i: i8) {
        self.write_u8(i.cast_unsigned());
    }

    #[inline]
    fn write_i16(&mut self, i: i16) {
        self.write_u16(i.cast_unsigned());
    }

    #[inline]
    fn write_i32(&mut self, i: i32) {
        self.write_u32(i.cast_unsigned());
    }

    #[inline]
    fn write_i64(&mut self, i: i64) {
        self.write_u64(i.cast_unsigned());
    }

    #[inline]
    fn write_i128(&mut self, i: i128) {
        self.write_u128(i.cast_unsigned());
    }

    #[inline]
    fn write_isize(&mut self, i: isize) {
        self.write_usize(i.cast_unsigned());
    }

    /// The state mixed by a multiply (the key index itself uses the state, see [`place`]).
    #[inline]
    fn finish(&self) -> u64 {
        folded_multiply(self.state, 0x9e37_79b9_7f4a_7c15)
    }
}

/// [`KeyHasher`] as a `BuildHasher`: a `HashMap` hashing keys as the key index does. For
/// the benchmark's classic factory, which must use the same hash.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, Default)]
pub struct KeyBuildHasher;

impl std::hash::BuildHasher for KeyBuildHasher {
    type Hasher = KeyHasher;

    fn build_hasher(&self) -> KeyHasher {
        KeyHasher::default()
    }
}

/// `bytes` folded into one word, what [`KeyHasher`] folds in for a `write`: their mix,
/// rotated so that the rotation of the next [`KeyHasher::word`] undoes it (a text key's
/// state is then its mix and `0xff`, see [`text_state`]).
#[inline]
fn fold(bytes: &[u8]) -> u64 {
    print_and_mix(bytes).3.rotate_right(ROTATION)
}

/// The length of `bytes`, its two [`words`], and their mix. Up to 16 bytes (a request
/// name), the mix is made of the words and the length (no multiply: the one of [`place`]
/// mixes); longer, of every 8-byte chunk.
#[inline]
fn print_and_mix(bytes: &[u8]) -> (u64, u64, u64, u64) {
    const K: u64 = 0x243f_6a88_85a3_08d3;
    let len = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
    let (first, last) = words(bytes);
    let mixed = if bytes.len() > 16 {
        fold_long(bytes, len)
    } else {
        first ^ last.rotate_left(31) ^ len.wrapping_mul(K)
    };
    (len, first, last, mixed)
}

/// Two words of `bytes` that, with the length, determine up to 16 bytes: the first and the
/// last eight (overlapping under 16), else the first and last four, else the first, middle
/// and last byte.
#[inline]
fn words(bytes: &[u8]) -> (u64, u64) {
    if let (Some(first), Some(last)) = (bytes.first_chunk::<8>(), bytes.last_chunk::<8>()) {
        (u64::from_le_bytes(*first), u64::from_le_bytes(*last))
    } else if let (Some(first), Some(last)) = (bytes.first_chunk::<4>(), bytes.last_chunk::<4>()) {
        (
            u64::from(u32::from_le_bytes(*first)),
            u64::from(u32::from_le_bytes(*last)),
        )
    } else {
        let byte = |i: usize| bytes.get(i).copied().map_or(0, u64::from);
        (
            byte(0) | byte(bytes.len() / 2) << 8 | byte(bytes.len().wrapping_sub(1)) << 16,
            0,
        )
    }
}

/// [`fold`] of more than 16 bytes.
#[cold]
fn fold_long(bytes: &[u8], len: u64) -> u64 {
    let mut state = len;
    let (chunks, rest) = bytes.as_chunks::<8>();
    for chunk in chunks {
        state = folded_multiply(state ^ u64::from_le_bytes(*chunk), 0x9e37_79b9_7f4a_7c15);
    }
    if let Some(last) = bytes.last_chunk::<8>() {
        if !rest.is_empty() {
            state = folded_multiply(state ^ u64::from_le_bytes(*last), 0x9e37_79b9_7f4a_7c15);
        }
    }
    state
}

#[cfg(test)]
mod tests {
    use super::KeyIndex;

    #[test]
    fn finds_every_key_and_no_other_whatever_the_count() {
        for count in [0_usize, 1, 2, 3, 7, 8, 9, 31, 100, 1000] {
            let names: Vec<String> = (0..count)
                .map(|i| format!("Request{i}").repeat(i % 4 + 1))
                .collect();
            let mut index = KeyIndex::new();
            for (row, name) in names.iter().enumerate() {
                index.insert(name.clone(), row);
                assert_eq!(index.get(name), Some(row));
            }
            assert!(index.by_text);
            for (row, name) in names.iter().enumerate() {
                assert_eq!(index.get(name), Some(row), "{name} of {count}");
                assert_eq!(index.find(name.as_str()), Some(row), "{name} of {count}");
            }
            for unknown in [
                "",
                "R",
                "Request",
                "Request1000000",
                "a much longer request name",
            ] {
                if !names.iter().any(|name| name == unknown) {
                    assert_eq!(index.get(&unknown.to_owned()), None);
                    assert_eq!(index.find(unknown), None);
                }
            }
        }
    }

    #[test]
    fn texts_that_share_their_prints_words_are_told_apart() {
        // Same length, first and last eight bytes: only the middle differs.
        let keys = [
            "AAAAAAAAxBBBBBBBB",
            "AAAAAAAAyBBBBBBBB",
            "AAAAAAAAzBBBBBBBB",
        ];
        let mut index = KeyIndex::new();
        for (row, key) in keys.into_iter().enumerate() {
            index.insert(key, row);
        }
        for (row, key) in keys.into_iter().enumerate() {
            assert_eq!(index.get(&key), Some(row));
        }
        assert_eq!(index.get(&"AAAAAAAAwBBBBBBBB"), None);
        // Every length up to 20, and texts differing in one byte at any position.
        let mut index = KeyIndex::new();
        let mut keys = Vec::new();
        for len in 0..20_usize {
            for position in 0..len {
                let mut key = vec![b'a'; len];
                key[position] = b'b';
                keys.push(String::from_utf8(key).unwrap_or_default());
            }
            keys.push("a".repeat(len));
        }
        for (row, key) in keys.iter().enumerate() {
            index.insert(key.clone(), row);
        }
        for (row, key) in keys.iter().enumerate() {
            assert_eq!(index.get(key), Some(row), "{key:?}");
            assert_eq!(index.get(&format!("{key}c")), None, "{key:?}c");
        }
    }

    #[test]
    fn places_a_few_request_names_each_in_its_home_cell() {
        let mut index = KeyIndex::new();
        for (row, name) in [
            "CreateKey",
            "DeleteKey",
            "RenameKey",
            "CommitKey",
            "CreateBucket",
            "DeleteBucket",
            "CreateVolume",
            "CreateTenant",
        ]
        .into_iter()
        .enumerate()
        {
            index.insert(name, row);
        }
        assert_eq!(index.max_probe, 0);
    }

    #[test]
    fn keys_of_every_hash_shape() {
        let keys: Vec<Vec<u8>> = (0..40_u8).map(|len| (0..len).collect()).collect();
        let mut index = KeyIndex::new();
        for (row, key) in keys.iter().enumerate() {
            index.insert(key.clone(), row);
        }
        assert!(!index.by_text);
        for (row, key) in keys.iter().enumerate() {
            assert_eq!(index.get(key), Some(row));
            assert_eq!(index.find(key.as_slice()), Some(row));
        }
        let mut integers = KeyIndex::new();
        for i in 0..64_u64 {
            integers.insert(i * 1024, usize::try_from(i).unwrap_or(0));
        }
        for i in 0..64_u64 {
            assert_eq!(integers.get(&(i * 1024)), usize::try_from(i).ok());
            assert_eq!(integers.get(&(i * 1024 + 1)), None);
        }
    }
}
