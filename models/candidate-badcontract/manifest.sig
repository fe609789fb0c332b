{
  "apiVersion": "fleetgate/v1",
  "kind": "ModelPackSignature",
  "algorithm": "ed25519",
  "keyId": "1b79400653d3951a39d9118971cb26647827e4c58ecc41c63029e48d12cc8bb1",
  "signature": "psCy9sZl5OWpfoQNT66O2WBNhpCBFMKRj+jjrP1NESuKB9H04iNFjvzIa+3kzrVKRwexcFW768IM/83ekemfDw=="
}
