use layout_core::LayoutFeature;

#[derive(LayoutFeature)]
enum Catalog {
    #[layout(version = 0, description = "Initial layout")]
    A,
    #[layout(version = 2, description = "Multi-tenancy tables")]
    C,
    #[layout(version = 1, description = "Buckets carry a storage layout")]
    B,
}

fn main() {}
