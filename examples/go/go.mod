module broadcast-gateway-example

go 1.19
