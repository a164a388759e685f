"""The vocabulary and the contract: causes, the report schema, report files, OpenSSL versions."""
