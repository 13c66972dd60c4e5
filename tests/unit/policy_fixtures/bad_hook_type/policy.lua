return { on_join = "yes" }
