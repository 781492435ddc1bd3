"""The engine core: validation, Source/Target/mappings/Row, run directories (store, tables, dirlock), sampling. Imports nothing above it."""
