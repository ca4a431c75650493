//! Reading an argument list of `--name value` options.

use std::ffi::{OsStr, OsString};
use std::str::FromStr;

use crate::Error;

/// Walks an argument list, one option at a time.
pub(crate) struct Options<'a> {
    it: std::slice::Iter<'a, OsString>,
}

impl<'a> Options<'a> {
    pub(crate) fn new(args: &'a [OsString]) -> Self {
        Options { it: args.iter() }
    }

    /// The next option's name (an option that is not UTF-8 is unknown).
    pub(crate) fn next_name(&mut self) -> Option<Result<&'a str, Error>> {
        let a = self.it.next()?;
        Some(
            a.to_str()
                .ok_or_else(|| Error::UnknownArgument(a.to_string_lossy().into_owned())),
        )
    }

    /// The value of option `name`.
    pub(crate) fn value(&mut self, name: &str) -> Result<&'a OsStr, Error> {
        self.it
            .next()
            .map(OsString::as_os_str)
            .ok_or_else(|| Error::MissingValue(name.to_string()))
    }

    /// The value of option `name` as text.
    pub(crate) fn text(&mut self, name: &str) -> Result<&'a str, Error> {
        let v = self.value(name)?;
        v.to_str().ok_or_else(|| Error::BadValue {
            arg: name.to_string(),
            value: v.to_string_lossy().into_owned(),
            want: "UTF-8 text",
        })
    }

    /// The value of option `name` parsed as a `T` (described as `want` in errors).
    pub(crate) fn parsed<T: FromStr>(
        &mut self,
        name: &str,
        want: &'static str,
    ) -> Result<T, Error> {
        let v = self.value(name)?;
        v.to_str()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| Error::BadValue {
                arg: name.to_string(),
                value: v.to_string_lossy().into_owned(),
                want,
            })
    }

    /// The value of option `name` as a descriptor number (not negative).
    pub(crate) fn fd(&mut self, name: &str) -> Result<i32, Error> {
        let v = self.value(name)?;
        v.to_str()
            .and_then(|s| s.parse::<i32>().ok())
            .filter(|fd| *fd >= 0)
            .ok_or_else(|| Error::BadValue {
                arg: name.to_string(),
                value: v.to_string_lossy().into_owned(),
                want: "a descriptor number",
            })
    }
}

/// Appends `--name value` to `out`.
pub(crate) fn push(out: &mut Vec<OsString>, name: &str, value: impl Into<OsString>) {
    out.push(name.into());
    out.push(value.into());
}
