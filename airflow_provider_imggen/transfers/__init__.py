"""Transfer operators: move generated images where they are kept."""
