{
  "apiVersion": "fleetgate/v1",
  "kind": "ModelPackSignature",
  "algorithm": "ed25519",
  "keyId": "1b79400653d3951a39d9118971cb26647827e4c58ecc41c63029e48d12cc8bb1",
  "signature": "61Fv6l/ek1/gYs8cP2mswQm+SM6WHnX8l/78myBjOOOA3jQX4WmW+eTLFqGEnTNPqA9GNM3OA+uPYpxAdOBwAA=="
}
