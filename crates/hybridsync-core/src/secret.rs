//! Connection strings that never print their password, and what stands between the
//! sink and the server (a pooler or nothing).

use std::fmt;

/// A cloud connection URL. `Debug` and `Display` show it with the password replaced
/// by `***`, so it can be logged and put in errors safely; [`CloudUrl::expose`] gives
/// the real string to the one place that connects. It deserializes from a plain string,
/// so a configuration file's URL is never held as a bare `String`.
#[derive(Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(transparent)]
pub struct CloudUrl(String);

impl CloudUrl {
    /// Wraps a URL.
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into())
    }

    /// The URL with its secret, for the driver only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with any password (`scheme://user:PASSWORD@host`) and any `password=`
    /// query parameter replaced by `***`.
    pub fn redacted(&self) -> String {
        let mut out = self.0.clone();
        if let Some(scheme_end) = out.find("://") {
            let rest = scheme_end + 3;
            let authority_end = out[rest..].find(['/', '?']).map_or(out.len(), |i| rest + i);
            if let Some(at) = out[rest..authority_end].rfind('@') {
                let userinfo = &out[rest..rest + at];
                if let Some(colon) = userinfo.find(':') {
                    out.replace_range(rest + colon + 1..rest + at, "***");
                }
            }
        }
        if let Some(query) = out.find('?') {
            let (head, params) = out.split_at(query + 1);
            let params: Vec<String> = params
                .split('&')
                .map(|p| match p.split_once('=') {
                    Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                    _ => p.to_owned(),
                })
                .collect();
            out = format!("{head}{}", params.join("&"));
        }
        out
    }
}

impl std::str::FromStr for CloudUrl {
    type Err = std::convert::Infallible;
    fn from_str(url: &str) -> Result<Self, Self::Err> {
        Ok(Self::new(url))
    }
}

impl fmt::Debug for CloudUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CloudUrl({})", self.redacted())
    }
}

impl fmt::Display for CloudUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// What stands between the sink and PostgreSQL.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Pooler {
    /// Sessions straight to PostgreSQL: statements are prepared once per connection and
    /// cached, the change listener may borrow a pooled connection, and TCP keepalives
    /// are set for each session.
    #[default]
    Direct,
    /// PgBouncer in transaction pooling mode (1.18 and later): every statement is an
    /// unnamed one (a named statement would outlive the transaction on a server
    /// connection another client gets next), no startup parameters PgBouncer refuses,
    /// no `LISTEN` through the pooler (the sink takes a separate direct URL for it).
    PgBouncerTransaction,
}

crate::text::text_enum!(Pooler, "pooler", Direct => "direct", PgBouncerTransaction => "pgbouncer-transaction" | "pgbouncer");
