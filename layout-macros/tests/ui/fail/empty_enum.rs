use layout_core::LayoutFeature;

#[derive(LayoutFeature)]
enum Catalog {}

fn main() {}
