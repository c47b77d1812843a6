use layout_core::LayoutFeature;

#[derive(LayoutFeature)]
enum Catalog {
    #[layout(version = 0, description = "Initial layout", version = 0)]
    Initial,
    #[layout(
        version = 1,
        description = "Old",
        deprecated,
        description = "Old thing",
        deprecated
    )]
    Old,
}

fn main() {}
