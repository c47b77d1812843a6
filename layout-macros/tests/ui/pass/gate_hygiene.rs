//! The generated check relies on nothing in scope and cannot clash with the user's names.
#![no_implicit_prelude]
#![allow(non_camel_case_types, dead_code)]

extern crate core;
extern crate layout_core;
extern crate std;

mod shadowing {
    pub struct Result;
    pub struct Ok;
    pub struct Err;
    pub struct From;
    pub mod core {}
    pub mod layout_core {}
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

struct Component {
    lvm: ::layout_core::LayoutVersionManager<Catalog>,
}

impl ::layout_core::LayoutAware<Catalog> for Component {
    fn layout_manager(&self) -> &::layout_core::LayoutVersionManager<Catalog> {
        &self.lvm
    }
}

impl Component {
    #[::layout_core::disallowed_until(Catalog::Next)]
    fn gated(&self, __layout_gate_closed: u32) -> ::core::result::Result<u32, ::layout_core::LayoutError> {
        // The user's names win inside the body, even the one the check uses.
        ::core::result::Result::Ok(__layout_gate_closed + 1)
    }
}

fn main() {
    let opts = <::layout_core::ManagerOptions as ::core::default::Default>::default()
        .with_start_intent(::layout_core::StartIntent::Init)
        .with_initial_layout_version(0);
    let lvm = ::layout_core::LayoutVersionManager::open(::layout_core::MemoryStorage::new(), opts);
    let component = Component { lvm: ::core::result::Result::unwrap(lvm) };
    ::std::assert!(::core::result::Result::is_err(&component.gated(1)));
    ::core::result::Result::unwrap(component.lvm.finalize_step(Catalog::Next));
    ::std::assert_eq!(::core::result::Result::unwrap(component.gated(1)), 2);
}
