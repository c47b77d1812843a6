use layout_core::LayoutFeature;

#[derive(LayoutFeature)]
enum Catalog {
    #[layout(version = 0, description = "Initial layout", since = "1.2")]
    Initial,
    #[layout(
        version = 1,
        descripton = "Buckets carry a storage layout",
        description = "x"
    )]
    Buckets,
    #[layout(verison = 2, description = "Multi-tenancy tables")]
    Tenants,
}

fn main() {}
