"""Model package handed to SGLang's ModelRegistry.register(...): every module here exposes EntryClass."""
