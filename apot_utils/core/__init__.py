"""The core: level sets (:mod:`.levels`), the readable reference quantizer (:mod:`.reference`) and the
8-bit layers' rounding (:mod:`.eight_bit`). It imports nothing else from the package."""
