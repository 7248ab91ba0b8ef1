//! Enums stored as one word in a TEXT column (a run's status, a trigger, a segment's kind...).
//! [`stored_words!`] declares one with each word written once: that word is what SQLite holds,
//! what JSON shows, what `Display` prints and what `FromStr` accepts, so the four can never
//! disagree. A stored word this build does not know is an error naming it, never a guess.

/// A stored word this build does not know (a database written by another version, or edited).
#[derive(Debug, thiserror::Error)]
#[error("unknown {what} {word:?}")]
pub struct UnknownWord {
    pub what: &'static str,
    /// The word as found, cut to 40 characters.
    pub word: String,
}

/// `stored_words! { /// doc  pub enum Name ("what it is") { Variant = "word", ... } }`
macro_rules! stored_words {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident ($what:literal) {
            $( $(#[$vmeta:meta])* $variant:ident = $word:literal ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        $vis enum $name {
            $( $(#[$vmeta])* $variant ),+
        }

        impl $name {
            /// Every value, in declaration order.
            #[allow(dead_code)]
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The stored word.
            pub fn as_str(self) -> &'static str {
                match self {
                    $( $name::$variant => $word ),+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = $crate::store::words::UnknownWord;

            fn from_str(word: &str) -> Result<Self, Self::Err> {
                match word {
                    $( $word => Ok($name::$variant), )+
                    _ => Err($crate::store::words::UnknownWord {
                        what: $what,
                        word: word.chars().take(40).collect(),
                    }),
                }
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl sqlx::Type<sqlx::Sqlite> for $name {
            fn type_info() -> sqlx::sqlite::SqliteTypeInfo {
                <str as sqlx::Type<sqlx::Sqlite>>::type_info()
            }

            fn compatible(ty: &sqlx::sqlite::SqliteTypeInfo) -> bool {
                <str as sqlx::Type<sqlx::Sqlite>>::compatible(ty)
            }
        }

        impl sqlx::Encode<'_, sqlx::Sqlite> for $name {
            fn encode_by_ref(
                &self,
                buf: &mut <sqlx::Sqlite as sqlx::Database>::ArgumentBuffer,
            ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
                <&str as sqlx::Encode<'_, sqlx::Sqlite>>::encode_by_ref(&self.as_str(), buf)
            }
        }

        impl<'r> sqlx::Decode<'r, sqlx::Sqlite> for $name {
            fn decode(
                value: sqlx::sqlite::SqliteValueRef<'r>,
            ) -> Result<Self, sqlx::error::BoxDynError> {
                if sqlx::ValueRef::is_null(&value) {
                    return Err(format!("missing {}", $what).into());
                }
                let word = <&str as sqlx::Decode<'r, sqlx::Sqlite>>::decode(value)?;
                Ok(word.parse::<$name>()?)
            }
        }
    };
}

pub(crate) use stored_words;

#[cfg(test)]
mod tests {
    stored_words! {
        /// A test enum.
        pub enum Colour ("colour") {
            Red = "red",
            DarkBlue = "dark-blue",
        }
    }

    #[test]
    fn each_word_reads_back_as_its_value_and_prints_as_itself() {
        for colour in Colour::ALL {
            assert_eq!(colour.as_str().parse::<Colour>().expect("known"), *colour);
            assert_eq!(colour.to_string(), colour.as_str());
            assert_eq!(serde_json::to_value(colour).expect("json"), colour.as_str());
        }
    }

    #[test]
    fn an_unknown_word_is_an_error_naming_it() {
        let err = "green".parse::<Colour>().expect_err("unknown");
        assert_eq!(err.to_string(), "unknown colour \"green\"");
    }
}
