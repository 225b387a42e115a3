# Runs at install time (see cmake/Install.cmake): config, unit and docs for
# the prefix chosen then (CMAKE_INSTALL_PREFIX), DESTDIR honoured by
# file(INSTALL).
set(_p "${CMAKE_INSTALL_PREFIX}")
string(REGEX REPLACE "(.)/+$" "\\1" _p "${_p}")
if(_p STREQUAL "/usr")
  set(_etc "/etc")
  set(_units "/lib/systemd/system")
elseif(_p STREQUAL "/")
  set(_p "")
  set(_etc "/etc")
  set(_units "/lib/systemd/system")
else()
  set(_etc "${_p}/etc")
  set(_units "${_p}/lib/systemd/system")
endif()
set(_tmp "${AL_BINARY_DIR}/al-install")
file(MAKE_DIRECTORY "${_tmp}")

# The files in etc/ name the /usr layout; rewrite for this one.
function(al_install_subst in out)
  file(READ "${in}" s)
  string(REPLACE "/usr/bin/airlock" "${_p}/bin/airlock" s "${s}")
  string(REPLACE "/usr/share/doc/airlock" "${_p}/share/doc/airlock" s "${s}")
  string(REPLACE "/etc/airlock" "${_etc}/airlock" s "${s}")
  string(REPLACE "/var/lib/airlock" "${AL_STATEDIR}" s "${s}")
  file(WRITE "${out}" "${s}")
endfunction()

al_install_subst("${AL_SOURCE_DIR}/etc/airlock.packaged.json" "${_tmp}/airlock.json")
al_install_subst("${AL_SOURCE_DIR}/etc/airlock.service" "${_tmp}/airlock.service")
configure_file("${AL_SOURCE_DIR}/etc/policy.json" "${_tmp}/policy.json" COPYONLY)

# An operator's edited config survives a second `make install`.
foreach(_f airlock.json policy.json)
  if(EXISTS "$ENV{DESTDIR}${_etc}/airlock/${_f}")
    message(STATUS "Keeping: $ENV{DESTDIR}${_etc}/airlock/${_f}")
  else()
    file(INSTALL DESTINATION "${_etc}/airlock" TYPE FILE FILES "${_tmp}/${_f}")
  endif()
endforeach()
file(INSTALL DESTINATION "${_units}" TYPE FILE FILES "${_tmp}/airlock.service")
file(INSTALL DESTINATION "${_p}/share/doc/airlock" TYPE FILE
     FILES "${AL_SOURCE_DIR}/README.md")
file(INSTALL DESTINATION "${_p}/share/doc/airlock/examples" TYPE FILE
     FILES "${AL_SOURCE_DIR}/etc/policy.example.json" "${AL_SOURCE_DIR}/etc/secrets.example.json")
