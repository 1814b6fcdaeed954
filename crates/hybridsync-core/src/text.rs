//! One spelling per enum value: `as_str`, `Display` and `FromStr` from a single table,
//! so the CLI, the configuration, metrics labels and storage never re-encode a name.

/// Implements `as_str`, `Display` and `FromStr` (case-insensitive, with aliases) for a
/// fieldless enum from one table of names.
macro_rules! text_enum {
    ($ty:ident, $what:literal, $($variant:ident => $text:literal $(| $alias:literal)*),+) => {
        impl $ty {
            /// Every value, in declaration order.
            pub const ALL: [$ty; [$(stringify!($variant)),+].len()] = [$($ty::$variant),+];

            /// The lowercase name used in the CLI, configuration and storage.
            pub fn as_str(self) -> &'static str {
                match self { $($ty::$variant => $text),+ }
            }
        }
        impl ::std::fmt::Display for $ty {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.pad(self.as_str())
            }
        }
        impl std::str::FromStr for $ty {
            type Err = $crate::Error;
            fn from_str(s: &str) -> $crate::Result<Self> {
                match s.to_ascii_lowercase().as_str() {
                    $($text $(| $alias)* => Ok($ty::$variant),)+
                    _ => Err($crate::Error::Parse { what: $what, value: s.to_owned() }),
                }
            }
        }
    };
}

pub(crate) use text_enum;

/// Bytes from an even number of hex digits (either case); `None` for anything else,
/// signs and spaces included.
pub fn decode_hex(s: &str) -> Option<Vec<u8>> {
    let nibble = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let bytes = s.as_bytes();
    if bytes.len() % 2 != 0 {
        return None;
    }
    bytes
        .chunks_exact(2)
        .map(|pair| Some((nibble(pair[0])? << 4) | nibble(pair[1])?))
        .collect()
}
