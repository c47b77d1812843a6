use layout_core::{belongs_to_layout_version, LayoutFeature};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, LayoutFeature)]
pub enum OmFeature {
    #[layout(version = 0, description = "Initial layout")]
    InitialVersion,
}

#[derive(Clone, Copy, Debug)]
pub enum Color {
    Red,
}

pub trait Handler {
    fn handle(&self);
}

/// Not `Default`: the factory could not build it.
pub struct NoDefault(u32);

#[belongs_to_layout_version(OmFeature::InitialVersion, key = "NoDefault")]
impl Handler for NoDefault {
    fn handle(&self) {}
}

#[derive(Default)]
pub struct Painted;

#[belongs_to_layout_version(Color::Red, key = "Paint")]
impl Handler for Painted {
    fn handle(&self) {}
}

fn main() {}
