# `make install` and `make deb` (cmake --install BUILD --prefix P, DESTDIR
# honoured). The layout follows the prefix given at install time:
#
#   P/bin/airlock
#   ETC/airlock/airlock.json, policy.json    ETC = /etc for P=/usr, else P/etc
#                                            (kept when already there)
#   UNITS/airlock.service                    UNITS = /lib/systemd/system for
#                                            P=/usr, else P/lib/systemd/system
#   P/share/doc/airlock/README.md, examples/
#
# airlock.json is etc/airlock.packaged.json and the unit etc/airlock.service,
# both written for P=/usr; other prefixes get their paths rewritten. The
# state folder (audit database, interception CA) is AL_STATEDIR whatever P
# (the unit's StateDirectory= is under /var/lib). No user is created and no
# folder under /var is made here: the Debian package's postinst does that.
set(AL_STATEDIR "/var/lib/airlock" CACHE PATH
    "airlock's state folder: audit database and interception CA")

install(TARGETS airlock RUNTIME DESTINATION bin)
install(CODE "
set(AL_SOURCE_DIR \"${CMAKE_SOURCE_DIR}\")
set(AL_BINARY_DIR \"${CMAKE_BINARY_DIR}\")
set(AL_STATEDIR \"${AL_STATEDIR}\")
include(\"${CMAKE_SOURCE_DIR}/cmake/InstallFiles.cmake\")
")
