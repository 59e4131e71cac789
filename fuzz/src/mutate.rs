//! A small deterministic mutator: byte edits, line edits, dictionary splices and, for inputs that
//! are JSON, edits of the parsed tree (so that most mutants still reach the code behind the JSON
//! decoder). Seeded, so a bounded run makes the same inputs on every machine.

use serde_json::{Map, Value};

/// splitmix64: tiny, fast, and good enough to pick mutations.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    #[must_use]
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
}

/// Bytes that tend to matter to the parsers here.
const INTERESTING_BYTES: &[u8] = b"\0\n\r\t \"'\\=[]{},:;/.-+#%@0159aAfFzZ\x7f\xc3\xa9\xff";

/// Characters of two, three and four bytes in UTF-8.
const MULTI_BYTE_CHARS: &[&str] = &["\u{e9}", "\u{20ac}", "\u{2028}", "\u{1d11e}"];

/// Numbers at the edges of the integer types the parsers use.
const INTERESTING_NUMBERS: &[&str] = &[
    "0",
    "1",
    "-1",
    "255",
    "256",
    "65535",
    "65536",
    "4294967295",
    "4294967296",
    "18446744073709551616",
    "99999999999999999999999",
    "1e309",
    "-0",
    "0x10",
    "1.5",
    "07",
];

/// Name of a random key of a map (or `None` when it is empty).
fn random_key(rng: &mut Rng, map: &Map<String, Value>) -> Option<String> {
    if map.is_empty() { None } else { map.keys().nth(rng.below(map.len())).cloned() }
}

fn random_scalar(rng: &mut Rng, dictionary: &[&str]) -> Value {
    match rng.below(7) {
        0 => Value::Null,
        1 => Value::Bool(rng.chance(2)),
        2 => serde_json::from_str(INTERESTING_NUMBERS[rng.below(INTERESTING_NUMBERS.len())])
            .unwrap_or(Value::from(rng.next_u64())),
        3 => Value::String(String::new()),
        4 => Value::Array(Vec::new()),
        5 => Value::Object(Map::new()),
        _ if !dictionary.is_empty() => Value::String(dictionary[rng.below(dictionary.len())].to_owned()),
        _ => Value::String("x".repeat(rng.below(300))),
    }
}

/// Edits one node of a JSON tree: replaces a value, drops or adds a key, duplicates or drops an
/// array element, or edits a string.
fn mutate_json(rng: &mut Rng, value: &mut Value, dictionary: &[&str], depth: usize) {
    let descend = depth < 12 && rng.below(3) != 0;
    match value {
        Value::Object(map) if descend && !map.is_empty() => {
            let key = random_key(rng, map).expect("non-empty");
            mutate_json(rng, map.get_mut(&key).expect("key exists"), dictionary, depth + 1);
        }
        Value::Array(list) if descend && !list.is_empty() => {
            let i = rng.below(list.len());
            mutate_json(rng, &mut list[i], dictionary, depth + 1);
        }
        Value::Object(map) => match rng.below(4) {
            0 => {
                if let Some(key) = random_key(rng, map) {
                    map.remove(&key);
                }
            }
            1 if !dictionary.is_empty() => {
                let key = dictionary[rng.below(dictionary.len())].to_owned();
                map.insert(key, random_scalar(rng, dictionary));
            }
            _ => *value = random_scalar(rng, dictionary),
        },
        Value::Array(list) => match rng.below(4) {
            0 if !list.is_empty() => {
                let i = rng.below(list.len());
                list.remove(i);
            }
            1 if !list.is_empty() => {
                let i = rng.below(list.len());
                let copy = list[i].clone();
                list.insert(i, copy);
            }
            2 => list.push(random_scalar(rng, dictionary)),
            _ => *value = random_scalar(rng, dictionary),
        },
        Value::String(s) if rng.chance(2) => {
            let mut bytes = std::mem::take(s).into_bytes();
            mutate_bytes(rng, &mut bytes, &[], dictionary, 256);
            *s = String::from_utf8_lossy(&bytes).into_owned();
        }
        _ => *value = random_scalar(rng, dictionary),
    }
}

/// One byte-level or line-level edit.
fn mutate_bytes(rng: &mut Rng, data: &mut Vec<u8>, corpus: &[Vec<u8>], dictionary: &[&str], max_len: usize) {
    let len = data.len();
    let pos = |rng: &mut Rng| if len == 0 { 0 } else { rng.below(len + 1) };
    match rng.below(12) {
        10 if len > 0 => {
            // A multi-byte character over as many bytes: same length, other boundaries (text
            // parsers that check a length in bytes and then slice by position).
            let c = MULTI_BYTE_CHARS[rng.below(MULTI_BYTE_CHARS.len())].as_bytes();
            let at = rng.below(len);
            let end = (at + c.len()).min(len);
            data.splice(at..end, c.iter().copied());
        }
        0 if len > 0 => {
            let i = rng.below(len);
            data[i] ^= 1 << rng.below(8);
        }
        1 if len > 0 => {
            let i = rng.below(len);
            data[i] = INTERESTING_BYTES[rng.below(INTERESTING_BYTES.len())];
        }
        2 => {
            let i = pos(rng);
            data.insert(i, INTERESTING_BYTES[rng.below(INTERESTING_BYTES.len())]);
        }
        3 if len > 0 => {
            let start = rng.below(len);
            let end = (start + 1 + rng.below(16)).min(len);
            data.drain(start..end);
        }
        4 if len > 0 => {
            // Duplicate a range somewhere else (repeats keys, sections, brackets).
            let start = rng.below(len);
            let end = (start + 1 + rng.below(64)).min(len);
            let chunk = data[start..end].to_vec();
            let at = pos(rng);
            data.splice(at..at, chunk);
        }
        5 | 6 if !dictionary.is_empty() => {
            let token = dictionary[rng.below(dictionary.len())].as_bytes();
            let at = pos(rng);
            if rng.chance(2) || len == 0 {
                data.splice(at..at, token.iter().copied());
            } else {
                let end = (at + 1 + rng.below(8)).min(len);
                data.splice(at.min(len)..end, token.iter().copied());
            }
        }
        7 => {
            // Replace a run of digits (or insert) with an edge number.
            let number = INTERESTING_NUMBERS[rng.below(INTERESTING_NUMBERS.len())].as_bytes();
            let start = (0..len).find(|&i| data[i].is_ascii_digit() && rng.chance(3)).unwrap_or(pos(rng));
            let end = (start..len).find(|&i| !data[i].is_ascii_digit()).unwrap_or(len).max(start);
            data.splice(start..end, number.iter().copied());
        }
        8 if !corpus.is_empty() => {
            // Splice: our head, another seed's tail.
            let other = &corpus[rng.below(corpus.len())];
            let cut = pos(rng).min(len);
            let from = if other.is_empty() { 0 } else { rng.below(other.len()) };
            data.truncate(cut);
            data.extend_from_slice(&other[from..]);
        }
        9 => {
            // Line edits: drop, duplicate or swap whole lines.
            let mut lines: Vec<Vec<u8>> = data.split(|&b| b == b'\n').map(<[u8]>::to_vec).collect();
            let n = lines.len();
            match rng.below(3) {
                0 if n > 1 => {
                    lines.remove(rng.below(n));
                }
                1 => {
                    let i = rng.below(n);
                    let copy = lines[i].clone();
                    lines.insert(rng.below(n + 1), copy);
                }
                _ => {
                    let (a, b) = (rng.below(n), rng.below(n));
                    lines.swap(a, b);
                }
            }
            *data = lines.join(&b'\n');
        }
        _ => data.truncate(pos(rng)),
    }
    data.truncate(max_len);
}

/// A mutant of `input`: one to four stacked edits, tree edits when `input` is JSON.
#[must_use]
pub fn mutate(rng: &mut Rng, input: &[u8], corpus: &[Vec<u8>], dictionary: &[&str], max_len: usize) -> Vec<u8> {
    if rng.chance(2)
        && let Ok(mut value) = serde_json::from_slice::<Value>(input)
    {
        for _ in 0..=rng.below(3) {
            mutate_json(rng, &mut value, dictionary, 0);
        }
        let mut out = serde_json::to_vec(&value).expect("a JSON value serializes");
        out.truncate(max_len);
        return out;
    }
    let mut data = input.to_vec();
    for _ in 0..=rng.below(4) {
        mutate_bytes(rng, &mut data, corpus, dictionary, max_len);
    }
    data
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_mutants_and_bounded() {
        let corpus = vec![br#"{"a":[1,2,{"b":"c"}]}"#.to_vec(), b"[Peer]\nPublicKey = x\n".to_vec()];
        let run = |seed| {
            let mut rng = Rng::new(seed);
            (0..500).map(|i| mutate(&mut rng, &corpus[i % 2], &corpus, &["key", "value"], 64)).collect::<Vec<_>>()
        };
        let (a, b) = (run(7), run(7));
        assert_eq!(a, b);
        assert!(a.iter().all(|m| m.len() <= 64));
        // It does change things: most mutants differ from their seed.
        let changed = a.iter().enumerate().filter(|(i, m)| **m != corpus[i % 2]).count();
        assert!(changed > 400, "only {changed} of 500 mutants differ");
    }
}
