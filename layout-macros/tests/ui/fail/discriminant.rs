use layout_core::LayoutFeature;

#[derive(LayoutFeature)]
enum Catalog {
    #[layout(version = 0, description = "Initial layout")]
    Initial = 0,
    #[layout(version = 1, description = "Buckets carry a storage layout")]
    Buckets = 5,
}

fn main() {}
