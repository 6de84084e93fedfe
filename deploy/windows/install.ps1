# Install the faultlab agent as a Windows service (run as Administrator):
#
#   .\install.ps1 -Agent .\faultlab-agent.exe -Certs .\faultlab-certs -HostName win-1 [-AllowIsolate]
#
# Certs holds ca.pem and HostName.pem/.key (`faultlab certs issue win-1 --san ADDRESS`).
# The service runs `faultlab-agent.exe service run --config <Dir>\agent.toml` as
# LocalSystem with automatic start. Remove with: faultlab-agent.exe service uninstall
param(
    [Parameter(Mandatory = $true)][string]$Agent,
    [Parameter(Mandatory = $true)][string]$Certs,
    [Parameter(Mandatory = $true)][string]$HostName,
    [string]$Dir = "$env:ProgramFiles\faultlab",
    [string]$Listen = "0.0.0.0:7420",
    [switch]$AllowIsolate
)
$ErrorActionPreference = "Stop"
New-Item -ItemType Directory -Force -Path $Dir | Out-Null
Copy-Item $Agent "$Dir\faultlab-agent.exe" -Force
Copy-Item "$Certs\ca.pem" "$Dir\ca.pem" -Force
Copy-Item "$Certs\$HostName.pem" "$Dir\agent.pem" -Force
Copy-Item "$Certs\$HostName.key" "$Dir\agent.key" -Force
# Only Administrators and SYSTEM may read the key.
icacls "$Dir\agent.key" /inheritance:r /grant:r "Administrators:R" "SYSTEM:R" | Out-Null
$isolate = if ($AllowIsolate) { "true" } else { "false" }
@"
listen = "$Listen"
max_isolation_ms = 600000

[allow]
connections = true
isolate = $isolate
link = false
reboot = false

[tls]
cert = 'agent.pem'
key = 'agent.key'
ca = 'ca.pem'
"@ | Set-Content -Encoding ascii "$Dir\agent.toml"
$existing = Get-Service -Name faultlab-agent -ErrorAction SilentlyContinue
if ($existing) {
    & "$Dir\faultlab-agent.exe" service uninstall
    Start-Sleep -Seconds 2
}
& "$Dir\faultlab-agent.exe" service install --config "$Dir\agent.toml"
if ($LASTEXITCODE -ne 0) { throw "service install failed" }
Start-Service faultlab-agent
Get-Service faultlab-agent
