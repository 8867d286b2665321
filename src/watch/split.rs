//! Splits the JSON of a list response into its `metadata` and each of its `items` as the
//! bytes arrive, so a list of every account (hundreds of megabytes) is decoded item by item
//! and never held whole.
//!
//! It reads only the structure (strings, with their escapes, and nesting) and trusts
//! serde_json to judge each piece: a malformed item is an error for that item alone.

/// A complete piece of the list, as its raw JSON.
#[derive(Debug, PartialEq, Eq)]
pub enum Piece<'a> {
    /// The list's `metadata` object.
    Metadata(&'a [u8]),
    /// One object of the list's `items`.
    Item(&'a [u8]),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Within {
    Nothing,
    Items,
    Metadata,
}

/// The longest top-level key remembered; the keys looked for are short.
const KEY_MAX: usize = 16;

#[derive(Debug)]
pub struct ListSplitter {
    depth: u32,
    in_string: bool,
    escaped: bool,
    /// The last string seen at the top level (up to `KEY_MAX` bytes): the key of the value
    /// that follows.
    key: Vec<u8>,
    within: Within,
    /// Whether a piece has begun and not ended.
    capturing: bool,
    /// The bytes of that piece from earlier chunks.
    pending: Vec<u8>,
    complete: bool,
}

/// The bytes are not one JSON object.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("the list is not a JSON object: unbalanced brackets at byte {0} of a chunk")]
pub struct Unbalanced(usize);

impl Default for ListSplitter {
    fn default() -> Self {
        Self {
            depth: 0,
            in_string: false,
            escaped: false,
            key: Vec::new(),
            within: Within::Nothing,
            capturing: false,
            pending: Vec::new(),
            complete: false,
        }
    }
}

impl ListSplitter {
    /// Whether the list's closing brace has been read.
    pub fn is_complete(&self) -> bool {
        self.complete
    }

    /// Reads the next `chunk` and passes `each` every piece it completes, in order.
    pub fn feed(
        &mut self,
        chunk: &[u8],
        mut each: impl FnMut(Piece<'_>),
    ) -> Result<(), Unbalanced> {
        // Where, in this chunk, the piece being captured began.
        let mut start = self.capturing.then_some(0);
        let mut i = 0;
        while i < chunk.len() {
            let b = chunk[i];
            if self.in_string {
                if self.escaped {
                    self.escaped = false;
                } else if b == b'\\' {
                    self.escaped = true;
                } else if b == b'"' {
                    self.in_string = false;
                } else if self.depth == 1 && self.key.len() < KEY_MAX {
                    self.key.push(b);
                }
                i += 1;
                continue;
            }
            match b {
                b'"' => {
                    self.in_string = true;
                    if self.depth == 1 {
                        self.key.clear();
                    }
                }
                b'{' | b'[' => {
                    if self.complete {
                        return Err(Unbalanced(i));
                    }
                    self.depth += 1;
                    let begins = match self.depth {
                        2 => {
                            self.within = match (b, self.key.as_slice()) {
                                (b'[', b"items") => Within::Items,
                                (b'{', b"metadata") => Within::Metadata,
                                _ => Within::Nothing,
                            };
                            self.within == Within::Metadata
                        }
                        3 => self.within == Within::Items && b == b'{',
                        _ => false,
                    };
                    if begins {
                        self.capturing = true;
                        start = Some(i);
                    }
                }
                b'}' | b']' => {
                    if self.depth == 0 {
                        return Err(Unbalanced(i));
                    }
                    let ends = match self.depth {
                        3 => self.within == Within::Items,
                        2 => self.within == Within::Metadata,
                        _ => false,
                    };
                    if ends && self.capturing {
                        let from = start.take().unwrap_or(0);
                        let piece: &[u8] = if self.pending.is_empty() {
                            &chunk[from..=i]
                        } else {
                            self.pending.extend_from_slice(&chunk[from..=i]);
                            &self.pending
                        };
                        if self.depth == 3 {
                            each(Piece::Item(piece));
                        } else {
                            each(Piece::Metadata(piece));
                        }
                        self.pending.clear();
                        self.capturing = false;
                    }
                    if self.depth == 2 {
                        self.within = Within::Nothing;
                    }
                    self.depth -= 1;
                    if self.depth == 0 {
                        self.complete = true;
                    }
                }
                _ => {}
            }
            i += 1;
        }
        if let Some(from) = start.filter(|_| self.capturing) {
            self.pending.extend_from_slice(&chunk[from..]);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces(chunks: &[&[u8]]) -> (Vec<String>, bool) {
        let mut splitter = ListSplitter::default();
        let mut out = Vec::new();
        for chunk in chunks {
            splitter
                .feed(chunk, |piece| {
                    out.push(match piece {
                        Piece::Metadata(m) => format!("M{}", String::from_utf8_lossy(m)),
                        Piece::Item(m) => format!("I{}", String::from_utf8_lossy(m)),
                    })
                })
                .unwrap();
        }
        (out, splitter.is_complete())
    }

    const LIST: &str = r#"{"kind":"AcmeDnsAccountList","apiVersion":"acmedns.io/v1alpha1","metadata":{"resourceVersion":"42","continue":""},"items":[{"metadata":{"name":"a"},"spec":{"domains":["x.test"]},"status":{"txt":[{"value":"}\"]{["}]}},{"metadata":{"name":"b\\"},"spec":{}}]}"#;

    #[test]
    fn a_list_splits_into_its_metadata_and_each_item() {
        let (out, complete) = pieces(&[LIST.as_bytes()]);
        assert_eq!(
            out,
            [
                r#"M{"resourceVersion":"42","continue":""}"#,
                r#"I{"metadata":{"name":"a"},"spec":{"domains":["x.test"]},"status":{"txt":[{"value":"}\"]{["}]}}"#,
                r#"I{"metadata":{"name":"b\\"},"spec":{}}"#,
            ]
        );
        assert!(complete);
        for piece in &out[1..] {
            let _: serde_json::Value =
                serde_json::from_str(&piece[1..]).expect("each item is whole JSON");
        }
    }

    #[test]
    fn chunks_split_anywhere_give_the_same_pieces() {
        let (whole, _) = pieces(&[LIST.as_bytes()]);
        let bytes = LIST.as_bytes();
        for at in 0..=bytes.len() {
            let (split, complete) = pieces(&[&bytes[..at], &bytes[at..]]);
            assert_eq!(split, whole, "split at {at}");
            assert!(complete);
        }
        let single: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(pieces(&single).0, whole, "one byte at a time");
    }

    #[test]
    fn a_list_cut_short_is_not_complete() {
        let bytes = LIST.as_bytes();
        let (out, complete) = pieces(&[&bytes[..bytes.len() - 1]]);
        assert_eq!(out.len(), 3);
        assert!(!complete, "the closing brace never came");
        let (out, complete) = pieces(&[&bytes[..bytes.len() - 40]]);
        assert_eq!(out.len(), 2, "the item cut off is not given");
        assert!(!complete);
    }

    #[test]
    fn an_empty_list_and_other_keys_give_no_items() {
        let (out, complete) = pieces(&[
            br#"{"kind":"X","items":[],"other":{"items":[{"a":1}]},"metadata":{"resourceVersion":"7"}}"#,
        ]);
        assert_eq!(out, [r#"M{"resourceVersion":"7"}"#]);
        assert!(complete);
    }

    #[test]
    fn unbalanced_brackets_are_an_error() {
        let mut splitter = ListSplitter::default();
        assert_eq!(splitter.feed(b"{}}", |_| {}), Err(Unbalanced(2)));
        let mut splitter = ListSplitter::default();
        assert_eq!(splitter.feed(b"{}{", |_| {}), Err(Unbalanced(2)));
    }
}
