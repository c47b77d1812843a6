//! The generated code relies on nothing in scope: not the trait, not the primitive names.
#![no_implicit_prelude]
#![allow(non_camel_case_types, dead_code)]

extern crate core;
extern crate layout_core;
extern crate std;

mod shadowing {
    pub struct u32;
    pub struct str;
    pub struct bool;
    pub struct Option;
    pub struct Some;
    pub mod core {}
}

#[allow(unused_imports)] // Unused is the point: nothing generated refers to these names.
use shadowing::*;

#[derive(
    ::core::clone::Clone,
    ::core::marker::Copy,
    ::core::fmt::Debug,
    ::core::cmp::PartialEq,
    ::core::cmp::Eq,
    ::core::cmp::PartialOrd,
    ::core::cmp::Ord,
    ::core::hash::Hash,
    ::layout_core::LayoutFeature,
)]
enum Catalog {
    #[layout(version = 0, description = "Initial layout")]
    Initial,
    #[layout(version = 1, description = "Next layout")]
    Next,
}

fn main() {
    use ::layout_core::LayoutFeature as _;
    ::std::assert_eq!(<Catalog as ::layout_core::LayoutFeature>::ALL.len(), 2);
    ::std::assert_eq!(Catalog::Next.layout_version(), 1);
    ::std::assert_eq!(Catalog::Next.name(), "Next");
    ::std::assert!(!Catalog::Next.is_deprecated());
}
