use std::marker::PhantomData;

use layout_core::LayoutFeature;

// Type and lifetime parameters need a field to be used at all; the derive reports the
// parameters and the field.
#[derive(LayoutFeature)]
enum Catalog<'a, T> {
    #[layout(version = 0, description = "Initial layout")]
    Initial(PhantomData<&'a T>),
}

fn main() {}
